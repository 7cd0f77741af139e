package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/authproxy/authproxy/internal/peers"
)

// cpuPeriodMicros is the CFS period of a CPU budget: 10 ms, so that a
// throttled proxy waits at most a few milliseconds for its next share
// instead of the default period's 100 ms.
const cpuPeriodMicros = 10_000

// proxyCPUBudget is AUTHPROXY_BENCH_PROXY_CPU, the CPUs each proxy of
// TestBench may use (e.g. 0.5), or 0 when unset: no budget. With a budget
// the proxy, not the load generator or the upstream sharing the machine,
// is what saturates first, so a path's maximum measures the proxy.
func proxyCPUBudget(t *testing.T) float64 {
	t.Helper()
	v := os.Getenv("AUTHPROXY_BENCH_PROXY_CPU")
	if v == "" {
		return 0
	}
	cores, err := strconv.ParseFloat(v, 64)
	if err != nil || cores <= 0 || cores > 64 {
		t.Fatalf("AUTHPROXY_BENCH_PROXY_CPU=%q: want a number of CPUs such as 0.5", v)
	}
	return cores
}

// limitCPU moves p and its child processes (Kamailio's workers) into a
// cgroup of their own whose CPU bandwidth is cores CPUs (CFS quota per
// cpuPeriodMicros), cgroup v1 or v2; the processes go back to the root
// group and the group is removed when the test ends.
func limitCPU(t *testing.T, p *peers.Process, cores float64) {
	t.Helper()
	dir, procs, limit, err := newCPUGroup(t.Name(), cores)
	if err != nil {
		t.Fatalf("AUTHPROXY_BENCH_PROXY_CPU needs a writable cgroup CPU controller (run as root): %v", err)
	}
	pids := treePIDs(p)
	t.Cleanup(func() {
		root := filepath.Join(filepath.Dir(dir), "cgroup.procs")
		for _, pid := range pids {
			_ = os.WriteFile(root, []byte(strconv.Itoa(pid)), 0)
		}
		_ = os.Remove(dir)
	})
	for _, pid := range pids {
		if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0); err != nil {
			t.Fatalf("move process %d into %s: %v", pid, dir, err)
		}
	}
	t.Logf("proxy processes %v limited to %.2f CPUs (%s)", pids, cores, limit)
}

// newCPUGroup creates a cgroup limited to cores CPUs and returns its
// directory, its cgroup.procs file and the limit as written.
func newCPUGroup(name string, cores float64) (dir, procs, limit string, err error) {
	quota := int(cores * cpuPeriodMicros)
	base := strings.NewReplacer("/", "_", " ", "_").Replace("authproxy-bench-" + name)
	if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil { // v1
		dir = filepath.Join("/sys/fs/cgroup/cpu", base)
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return "", "", "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(cpuPeriodMicros)), 0); err != nil {
			return "", "", "", err
		}
		if err := os.WriteFile(filepath.Join(dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(quota)), 0); err != nil {
			return "", "", "", err
		}
		return dir, filepath.Join(dir, "cgroup.procs"), fmt.Sprintf("cfs_quota_us %d per %d", quota, cpuPeriodMicros), nil
	}
	dir = filepath.Join("/sys/fs/cgroup", base) // v2, the cpu controller enabled for the root's children
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		return "", "", "", err
	}
	limit = fmt.Sprintf("%d %d", quota, cpuPeriodMicros)
	if err := os.WriteFile(filepath.Join(dir, "cpu.max"), []byte(limit), 0); err != nil {
		return "", "", "", err
	}
	return dir, filepath.Join(dir, "cgroup.procs"), "cpu.max " + limit, nil
}

// treePIDs is p's process id and its children's.
func treePIDs(p *peers.Process) []int {
	root := p.Pid()
	pids := []int{root}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == root {
			continue
		}
		if st, ok := readStat(pid); ok && st.ppid == root {
			pids = append(pids, pid)
		}
	}
	return pids
}
