package main

import (
	"context"
	"log/slog"
	"runtime"
	"syscall"
	"time"
)

// procsByLoad ([runtime] procs_by_load) runs Go code on one P while
// authproxy uses less than procsLoadThreshold of a core, and on max Ps
// while it uses more, until ctx ends. On a machine it shares with the PBX
// one P adds far less latency (no idle P to wake and spin on every
// handoff) but caps authproxy at one core. The same load costs about a
// third more CPU on two Ps than on one, so the one threshold leaves a gap
// either way and the setting does not flap.
func procsByLoad(ctx context.Context, max int, log *slog.Logger) {
	if max < 2 {
		return
	}
	runtime.GOMAXPROCS(1)
	t := time.NewTicker(procsLoadInterval)
	defer t.Stop()
	last, lastAt := processCPU(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			cpu := processCPU()
			cores := float64(cpu-last) / float64(now.Sub(lastAt))
			last, lastAt = cpu, now
			cur := runtime.GOMAXPROCS(0)
			if n := nextProcs(cur, max, cores); n != cur {
				runtime.GOMAXPROCS(n)
				log.Info("gomaxprocs changed", "from", cur, "to", n, "cpu_cores", float64(int(cores*100))/100)
			}
		}
	}
}

// procsLoadThreshold is the share of a core above which one P is not
// enough, and procsLoadInterval how often the load is looked at.
const (
	procsLoadThreshold = 0.85
	procsLoadInterval  = time.Second
)

// nextProcs is the GOMAXPROCS for a process on cur Ps that used cores of
// CPU over the last interval.
func nextProcs(cur, max int, cores float64) int {
	switch {
	case cur == 1 && cores > procsLoadThreshold:
		return max
	case cur > 1 && cores < procsLoadThreshold:
		return 1
	}
	return cur
}

// processCPU is the user and system CPU time the process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
