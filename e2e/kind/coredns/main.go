// CoreDNS for the kind node with only the plugins a cluster's DNS uses: those of the Corefile
// kubeadm writes (errors, health, ready, kubernetes, prometheus, forward, cache, loop, reload,
// loadbalance) and a few a person debugging DNS reaches for (log, debug, hosts, whoami). CoreDNS
// itself documents this way of building it (a main that imports coremain and the chosen plugins);
// the full plugin set adds the cloud providers' SDKs (route53, azure, clouddns), etcd, dnstap and
// tracing, which the node never runs and which were most of the build's time.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() {
	coremain.Run()
}
