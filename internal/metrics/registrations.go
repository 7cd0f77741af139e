package metrics

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authproxy/authproxy/proxy"
)

// registrationSource is a Source that also keeps trunk registrations
// (*proxy.Proxy).
type registrationSource interface {
	Registrations() []proxy.RegistrationState
}

// registrationCollector reports each trunk registration ([[registration]])
// at scrape time: authproxy_registration_up{upstream, registration} is 1
// while it is registered, 0 while registering, failing or stopped. There
// is no aggregate: sum() of the series is the count registered.
type registrationCollector struct {
	src registrationSource
	up  *prometheus.Desc
}

func newRegistrationCollector(src registrationSource) *registrationCollector {
	return &registrationCollector{src: src, up: prometheus.NewDesc(namespace+"_registration_up",
		"1 while the trunk registration ([[registration]], by upstream and address-of-record) is registered upstream, 0 while it is registering, failing or stopped.",
		[]string{"upstream", "registration"}, nil)}
}

func (c *registrationCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.up }

func (c *registrationCollector) Collect(ch chan<- prometheus.Metric) {
	regs := c.src.Registrations()
	names := registrationNames(regs)
	for i, r := range regs {
		v := 0.0
		if r.State == proxy.RegStateRegistered {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, v, r.Upstream, names[i])
	}
}

// registrationNames returns the registration label of each of regs: its
// address-of-record, followed by " #2", " #3"... for the second and later
// registrations of one AOR with one upstream (different contact users),
// in configuration order, so that no two series collide.
func registrationNames(regs []proxy.RegistrationState) []string {
	out := make([]string, len(regs))
	seen := map[[2]string]int{}
	for i, r := range regs {
		k := [2]string{r.Upstream, r.AOR}
		seen[k]++
		out[i] = r.AOR
		if n := seen[k]; n > 1 {
			out[i] += " #" + strconv.Itoa(n)
		}
	}
	return out
}
