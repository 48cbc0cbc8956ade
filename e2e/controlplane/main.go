// Command controlplane is a multi-call binary that runs a small, real
// Kubernetes control plane for levee's end-to-end tests:
//
//	controlplane up --dir DIR [--port N]      orchestrate everything below
//	controlplane etcd --data-dir D ...         embedded etcd
//	controlplane kube-apiserver FLAGS...       upstream kube-apiserver
//	controlplane kube-controller-manager ...   upstream kube-controller-manager
//	controlplane fake-kubelet --kubeconfig K   a node whose pods "run" (no containers)
//
// The components are the upstream ones, compiled from the k8s.io/kubernetes
// module: nothing is downloaded at run time. `up` runs each component as its
// own child process (a re-exec of this binary), because the components keep
// global state (flags, feature gates, metric and scheme registries) that
// must not be shared between them.
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as upstream's main packages do

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const usage = `usage: controlplane COMMAND [ARGS...]

commands:
  up --dir DIR [--port N] [--fake-kubelet=false]
                                  start etcd, kube-apiserver, kube-controller-manager and
                                  fake-kubelet, write DIR/admin.kubeconfig and DIR/ready,
                                  run until signalled
  etcd [flags]                    embedded single-member etcd (see: controlplane etcd -h)
  kube-apiserver [flags]          upstream kube-apiserver
  kube-controller-manager [flags] upstream kube-controller-manager
  fake-kubelet [flags]            binds pods to a fake node and reports them Running/Ready
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	command, args := os.Args[1], os.Args[2:]
	switch command {
	case "up":
		os.Exit(runUp(args))
	case "etcd":
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		os.Exit(runCobra(apiserver.NewAPIServerCommand(), args))
	case "kube-controller-manager":
		os.Exit(runCobra(controllermanager.NewControllerManagerCommand(), args))
	case "fake-kubelet":
		os.Exit(runFakeKubelet(args))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "controlplane: unknown command %q\n\n%s", command, usage)
		os.Exit(2)
	}
}

// runCobra runs an upstream component command the way its own main() does,
// but with our argument list (cobra would otherwise read os.Args[1:], which
// starts with the subcommand name).
func runCobra(cmd *cobra.Command, args []string) int {
	cmd.SetArgs(args)
	return cli.Run(cmd)
}
