package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The controllers levee's tests rely on, and nothing that needs real nodes
// or a cloud (fake-kubelet stands in for the scheduler and the kubelet).
var controllers = []string{
	"deployment-controller",
	"replicaset-controller",
	"horizontal-pod-autoscaler-controller",
	"garbage-collector-controller", // owner references: deleting a Deployment/HPA owner cleans up
	"namespace-controller",         // deleting a test namespace actually finishes
	"serviceaccount-controller",    // the "default" ServiceAccount, which pod admission requires
	"serviceaccount-token-controller",
	"root-ca-certificate-publisher-controller", // kube-root-ca.crt, used by projected SA tokens
	"clusterrole-aggregation-controller",       // admin/edit/view ClusterRoles get their rules
	"endpointslice-controller",                 // Services' endpoints follow pod readiness (readiness gates)
}

const startTimeout = 3 * time.Minute

// fakeNode is the node fake-kubelet registers and binds every pod to.
const fakeNode = "levee-e2e-node"

// runUp generates a PKI, starts etcd, kube-apiserver,
// kube-controller-manager and fake-kubelet as child processes, waits until
// the cluster is usable, and then supervises them until a signal or a
// child's death, when it stops them all.
// Every `up` starts an empty cluster: DIR's previous PKI and data are wiped.
func runUp(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dirFlag := fs.String("dir", "", "directory for PKI, data, logs and kubeconfigs (required)")
	port := fs.Int("port", 0, "kube-apiserver secure port on 127.0.0.1 (0: pick a free one)")
	fakeKubelet := fs.Bool("fake-kubelet", true, "run fake-kubelet, so pods get bound to node "+fakeNode+" and become Running/Ready; without it they stay Pending")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dirFlag == "" {
		fmt.Fprintln(os.Stderr, "up: --dir is required")
		return 2
	}
	dir, err := filepath.Abs(*dirFlag)
	if err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	pidFile := filepath.Join(dir, "up.pid")
	if running(pidFile) {
		fmt.Fprintf(os.Stderr, "up: a control plane already runs in %s (pid file %s)\n", dir, pidFile)
		return 1
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "up: %v\n", err)
		return 1
	}
	defer os.Remove(pidFile)

	// Stop on SIGINT/SIGTERM (ctx's cause is then context.Canceled); a
	// child dying unexpectedly cancels ctx too, with the story as its cause.
	ctx, stopSignals := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithCancelCause(ctx)
	sup := &supervisor{logDir: filepath.Join(dir, "logs"), cancel: cancel}
	defer sup.stopAll() // runs before the pid file goes: no child outlives it

	err = up(ctx, sup, dir, *port, *fakeKubelet)
	if err == nil {
		<-ctx.Done()
	}
	os.Remove(filepath.Join(dir, "ready"))
	switch cause := context.Cause(ctx); {
	case cause == nil: // start-up failed by itself
		fmt.Fprintf(os.Stderr, "up: %v; stopping the control plane\n", err)
		return 1
	case errors.Is(cause, context.Canceled):
		fmt.Fprintln(os.Stderr, "up: signalled; stopping the control plane")
		return 0
	default:
		fmt.Fprintf(os.Stderr, "up: %v\nup: stopping the control plane\n", cause)
		return 1
	}
}

// running reports whether pidFile names a live process.
func running(pidFile string) bool {
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// up does the start-up sequence; it returns once the cluster is ready.
func up(ctx context.Context, sup *supervisor, dir string, apiPort int, fakeKubelet bool) error {
	for _, stale := range []string{"ready", "pki", "etcd", "logs"} {
		if err := os.RemoveAll(filepath.Join(dir, stale)); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(sup.logDir, 0o755); err != nil {
		return err
	}
	p, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("generating PKI: %w", err)
	}

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	if apiPort == 0 {
		apiPort = ports[2]
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)

	admin := filepath.Join(dir, "admin.kubeconfig")
	kcm := filepath.Join(dir, "controller-manager.kubeconfig")
	kubelet := filepath.Join(dir, "fake-kubelet.kubeconfig")
	for path, user := range map[string]*keyPair{admin: p.admin, kcm: p.kcm, kubelet: p.fakeKubelet} {
		if err := writeKubeconfig(path, server, p.ca, user); err != nil {
			return err
		}
	}
	client := httpClient(p)

	// etcd, then kube-apiserver once etcd answers, then the controller
	// manager once the API is ready: each waits for the previous, so a
	// failure shows up in the log of the component that caused it.
	if err := sup.start("etcd",
		"--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-url="+etcdURL,
		fmt.Sprintf("--listen-peer-url=http://127.0.0.1:%d", ports[1]),
	); err != nil {
		return err
	}
	if err := waitFor(ctx, "etcd", client, etcdURL+"/health", `"health":"true"`); err != nil {
		return err
	}

	auditPolicy := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(auditPolicy, []byte(auditPolicyYAML), 0o644); err != nil {
		return err
	}
	audit := []string{
		"--audit-policy-file=" + auditPolicy,
		"--audit-log-path=" + filepath.Join(sup.logDir, "audit.jsonl"),
		"--audit-log-format=json",
	}
	if err := sup.start("kube-apiserver", append(apiserverArgs(p, etcdURL, apiPort), audit...)...); err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver", client, server+"/readyz", "ok"); err != nil {
		return err
	}

	if err := sup.start("kube-controller-manager", controllerManagerArgs(p, kcm)...); err != nil {
		return err
	}
	// The "default" ServiceAccount exists once the controller manager works;
	// before that, creating a pod in "default" would be refused.
	if err := waitFor(ctx, "kube-controller-manager", client,
		server+"/api/v1/namespaces/default/serviceaccounts/default", `"default"`); err != nil {
		return err
	}

	if fakeKubelet {
		if err := sup.start("fake-kubelet", "--kubeconfig="+kubelet, "--node-name="+fakeNode); err != nil {
			return err
		}
		if err := waitFor(ctx, "fake-kubelet", client, server+"/api/v1/nodes/"+fakeNode, `"KubeletReady"`); err != nil {
			return err
		}
	}

	ready := fmt.Sprintf("KUBECONFIG=%s\nSERVER=%s\n", admin, server)
	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(ready), 0o644); err != nil {
		return err
	}
	fmt.Printf("controlplane ready: KUBECONFIG=%s\n", admin)
	return nil
}

// auditPolicyYAML logs, at the Metadata level (who, with which User-Agent, what, when, the
// answer's code), every write to the objects levee acts on: tests check which replica wrote
// what against its Lease. Nothing else is logged.
const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch, delete]
    resources:
      - group: levee.dev
        resources: [backpressurepolicies, backpressurepolicies/status]
      - group: coordination.k8s.io
        resources: [leases]
      - group: ""
        resources: [pods, pods/status]
      - group: apps
        resources: [deployments, statefulsets, daemonsets]
  - level: None
`

func apiserverArgs(p *pki, etcdURL string, port int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		// No default route on a test machine, so say where we are; the
		// "kubernetes" Service can't point at loopback, hence no reconciler.
		"--advertise-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--service-cluster-ip-range=10.96.0.0/16",
		"--allow-privileged=true",
		"--authorization-mode=Node,RBAC",
		"--cert-dir=" + p.dir,
		"--tls-cert-file=" + p.path("apiserver.crt"),
		"--tls-private-key-file=" + p.path("apiserver.key"),
		"--client-ca-file=" + p.path("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + p.path("sa.pub"),
		"--service-account-signing-key-file=" + p.path("sa.key"),
		// The aggregation layer, which levee's external metrics API sits behind.
		"--requestheader-client-ca-file=" + p.path("front-proxy-ca.crt"),
		"--requestheader-allowed-names=front-proxy-client",
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + p.path("front-proxy-client.crt"),
		"--proxy-client-key-file=" + p.path("front-proxy-client.key"),
		// Off: kube-apiserver then dials a Service's ClusterIP, or for an
		// ExternalName Service (how tests reach a levee on this host, there
		// being no kube-proxy) its external name. On would refuse ExternalName.
		"--enable-aggregator-routing=false",
		"--profiling=false",
	}
}

func controllerManagerArgs(p *pki, kubeconfig string) []string {
	return []string{
		// As on a real cluster, each controller acts as its own ServiceAccount
		// in kube-system (tokens from the TokenRequest API, signed with sa.key)
		// and is authorized by its bootstrap ClusterRole: the HPA controller's
		// metric requests reach levee as
		// system:serviceaccount:kube-system:horizontal-pod-autoscaler. This
		// kubeconfig (system:masters) only creates those ServiceAccounts.
		"--kubeconfig=" + kubeconfig,
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--controllers=" + strings.Join(controllers, ","),
		// The default 20 requests a second would take minutes to create the
		// pods of the scale benchmark's thousands of Deployments.
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		// Fast HPA reactions keep scaling tests short.
		"--horizontal-pod-autoscaler-sync-period=2s",
		"--horizontal-pod-autoscaler-downscale-stabilization=5s",
		"--service-account-private-key-file=" + p.path("sa.key"),
		"--root-ca-file=" + p.path("ca.crt"),
		// No HTTPS endpoint of its own: nothing probes it, and a fixed
		// default port (10257) would clash between concurrent clusters.
		"--secure-port=0",
		"--profiling=false",
	}
}

// httpClient trusts the cluster CA and authenticates as the admin, for
// readiness probes.
func httpClient(p *pki) *http.Client {
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.cert)
	cert := tls.Certificate{Certificate: [][]byte{p.admin.cert.Raw}, PrivateKey: p.admin.key}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		},
	}
}

// waitFor polls url until it answers 200 with a body containing want.
func waitFor(ctx context.Context, what string, client *http.Client, url, want string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), want) {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %.200s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != context.DeadlineExceeded {
				return cause
			}
			return fmt.Errorf("%s not ready after %v (last: %s)", what, startTimeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// freePorts asks the kernel for n distinct free loopback ports. There is a
// small window before the child binds them; good enough for tests.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // held open until all are picked, so they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// supervisor runs the components as child processes of this one.
type supervisor struct {
	logDir string
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	children []*child
	stopping bool
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been waited for
}

// start re-executes this binary as `name args...`, logging to logDir/name.log.
func (s *supervisor) start(name string, args ...string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(s.logDir, name+".log")
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child has its own copy

	cmd := exec.Command(exe, append([]string{name}, args...)...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a terminal's Ctrl-C reaches only `up`,
		// which then stops the children in order, and stopAll can signal
		// anything a child may have started along with it.
		Setpgid: true,
		// If `up` itself is killed (SIGKILL), the kernel kills the child.
		Pdeathsig: syscall.SIGKILL,
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return errors.New("stopping")
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	s.children = append(s.children, c)
	go func() {
		err := cmd.Wait()
		close(c.done)
		s.mu.Lock()
		expected := s.stopping
		s.mu.Unlock()
		if !expected {
			s.cancel(fmt.Errorf("%s exited (%v); its log, %s, ends with:\n%s", name, err, logPath, tail(logPath, 30)))
		}
	}()
	fmt.Fprintf(os.Stderr, "up: started %s (pid %d), log %s\n", name, cmd.Process.Pid, logPath)
	return nil
}

// stopAll stops the children in reverse start order (controller manager,
// API server, etcd): SIGTERM to each process group, SIGKILL after a grace
// period, and waits for each. It returns when no child is left.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	s.stopping = true
	children := s.children
	s.mu.Unlock()
	for i := len(children) - 1; i >= 0; i-- {
		c := children[i]
		pgid := -c.cmd.Process.Pid
		syscall.Kill(pgid, syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			fmt.Fprintf(os.Stderr, "up: %s did not stop in 15s; killing it\n", c.name)
		}
		// Also reaps any leftover member of the group.
		syscall.Kill(pgid, syscall.SIGKILL)
		<-c.done
	}
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
