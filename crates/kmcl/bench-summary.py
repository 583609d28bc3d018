#!/usr/bin/env python3
# Medians and ratios from a `cargo bench -p kmcl` run: python3 bench-summary.py target/criterion
import json, os, sys
root = sys.argv[1]
def med(group, name):
    p = os.path.join(root, group, name, 'new', 'estimates.json')
    return json.load(open(p))['median']['point_estimate']
rows = []
g="two_threads_64B"; N=200000
cb=med(g,'crossbeam_bounded'); mp=med(g,'std_mpsc_sync'); st=med(g,'kmcl_ring_single_thread')
ce=med(g,'kmcl_ring_commit_each'); c32=med(g,'kmcl_ring_commit_32'); cd=med(g,'kmcl_ring_default')
def mps(t): return N/(t/1e9)/1e6
print(f"64B two threads (Mpackets/s, median): crossbeam {mps(cb):.2f}, std mpsc {mps(mp):.2f}, ring commit-each {mps(ce):.2f}, ring commit-32 {mps(c32):.2f}, ring single-thread {mps(st):.2f}")
print(f"  ring default (coalescing) {mps(cd):.2f}: / crossbeam = {cb/cd:.2f}x ; / std mpsc = {mp/cd:.2f}x")
print(f"  ratio ring commit-each / crossbeam = {cb/ce:.2f}x ; commit-32 / crossbeam = {cb/c32:.2f}x")
print(f"  ratio ring commit-each / std mpsc  = {mp/ce:.2f}x ; commit-32 / std mpsc  = {mp/c32:.2f}x")
g='64KiB'; B=2000*65536
def gibs(t): return B/(t/1e9)/2**30
m=med(g,'memcpy_one_thread'); mw=med(g,'memcpy_one_thread_1MiB_working_set')
r1=med(g,'kmcl_ring_two_threads_1MiB_ring'); r2=med(g,'kmcl_ring_two_threads_256KiB_ring')
print(f"64KiB (GiB/s, median): memcpy hot {gibs(m):.2f}, memcpy 1MiB set {gibs(mw):.2f}, ring 1MiB {gibs(r1):.2f}, ring 256KiB {gibs(r2):.2f}")
print(f"  ring 1MiB / memcpy hot = {m/r1:.2f} ; ring 256KiB / memcpy hot = {m/r2:.2f}")
print(f"  ring 1MiB / memcpy 1MiB set = {mw/r1:.2f} ; ring 256KiB / memcpy 1MiB set = {mw/r2:.2f}")
try:
    g='cross_process'
    p=med(g,'pipelined_64B_window_256'); rt=med(g,'round_trip_64B')
    print(f"cross-process: pipelined {20000/(p/1e9)/1e6:.3f} M transactions/s, round trip median {rt/1000:.2f} us")
except Exception as e:
    print("cross-process: missing", e)
