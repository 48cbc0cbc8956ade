package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

// runFakeKubelet plays the scheduler and the kubelet of one node that runs
// nothing: it binds every unscheduled pod to its node and reports it
// Running, with an IP, its containers ready, and Ready computed from the
// containers and the pod's readiness gates exactly as the kubelet does it
// (levee holds producers back through a readiness gate, so that part must be
// real). Terminating pods are removed at once, as a kubelet would after
// stopping their containers. No container ever runs. Pods that name another
// scheduler (spec.schedulerName) are left alone, Pending.
//
// kwok does the same job more generally; this is a few hundred lines on client-go,
// which the binary already contains, instead of another dependency tree to
// reconcile with the control plane's, plus a scheduler.
func runFakeKubelet(args []string) int {
	fs := flag.NewFlagSet("fake-kubelet", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig with rights to bind pods and write node and pod status (required)")
	nodeName := fs.String("node-name", "fake-node", "name of the node to register")
	// Pod IPs are only data (nothing dials them): they give EndpointSlices
	// something valid to hold, which loopback addresses are not.
	podCIDR := fs.String("pod-cidr", "10.244.0.0/16", "range to hand pod IPs out from")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *kubeconfig == "" {
		fmt.Fprintln(os.Stderr, "fake-kubelet: --kubeconfig is required")
		return 2
	}
	prefix, err := netip.ParsePrefix(*podCIDR)
	if err != nil || !prefix.Addr().Is4() {
		fmt.Fprintf(os.Stderr, "fake-kubelet: --pod-cidr: want an IPv4 CIDR, got %q\n", *podCIDR)
		return 2
	}
	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-kubelet: %v\n", err)
		return 1
	}
	config.QPS, config.Burst = 100, 200 // tests create pods in bursts
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-kubelet: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := registerNode(ctx, client, *nodeName); err != nil {
		fmt.Fprintf(os.Stderr, "fake-kubelet: registering node %s: %v\n", *nodeName, err)
		return 1
	}

	factory := informers.NewSharedInformerFactory(client, 0)
	k := &fakeKubelet{
		client: client,
		node:   *nodeName,
		pods:   factory.Core().V1().Pods().Lister(),
		queue:  workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName]()),
		ips:    newIPPool(prefix),
	}
	enqueue := func(obj any) {
		if name, err := cache.ObjectToName(obj); err == nil {
			k.queue.Add(name)
		}
	}
	_, err = factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake-kubelet: %v\n", err)
		return 1
	}
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())

	var workers sync.WaitGroup
	for range 4 {
		workers.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	fmt.Fprintf(os.Stderr, "fake-kubelet: node %s ready\n", *nodeName)
	<-ctx.Done()
	k.queue.ShutDown()
	factory.Shutdown()
	workers.Wait()
	return 0
}

// nodeIP is the node's address and every pod's host IP. Loopback, so that
// anything that does try to reach "the kubelet" stays on this machine.
const nodeIP = "127.0.0.1"

func registerNode(ctx context.Context, client kubernetes.Interface, name string) error {
	nodes := client.CoreV1().Nodes()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"kubernetes.io/hostname": name,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
	}}}
	node, err := nodes.Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = nodes.Get(ctx, name, metav1.GetOptions{})
	}
	if err != nil {
		return err
	}

	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("64"),
		corev1.ResourceMemory: resource.MustParse("256Gi"),
		corev1.ResourcePods:   resource.MustParse("1000"),
	}
	now := metav1.Now()
	node.Status = corev1.NodeStatus{
		Capacity:    capacity,
		Allocatable: capacity,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "fake-kubelet is posting ready status", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: nodeIP},
			{Type: corev1.NodeHostName, Address: name},
		},
		NodeInfo: corev1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "fake"},
	}
	node, err = nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	// Admission taints a new node not-ready until a node controller sees it
	// Ready; none runs here, so lift the taint ourselves.
	var taints []corev1.Taint
	for _, t := range node.Spec.Taints {
		if t.Key != corev1.TaintNodeNotReady {
			taints = append(taints, t)
		}
	}
	if len(taints) != len(node.Spec.Taints) {
		node.Spec.Taints = taints
		_, err = nodes.Update(ctx, node, metav1.UpdateOptions{})
	}
	return err
}

type fakeKubelet struct {
	client kubernetes.Interface
	node   string
	pods   corelisters.PodLister
	queue  workqueue.TypedRateLimitingInterface[cache.ObjectName]
	ips    *ipPool
}

func (k *fakeKubelet) processNext(ctx context.Context) bool {
	name, shutdown := k.queue.Get()
	if shutdown {
		return false
	}
	defer k.queue.Done(name)
	if err := k.sync(ctx, name); err != nil {
		// Conflicts are expected: levee writes its own pod conditions too.
		if !apierrors.IsConflict(err) && !errors.Is(err, context.Canceled) {
			fmt.Fprintf(os.Stderr, "fake-kubelet: %s: %v\n", name, err)
		}
		k.queue.AddRateLimited(name)
		return true
	}
	k.queue.Forget(name)
	return true
}

func (k *fakeKubelet) sync(ctx context.Context, name cache.ObjectName) error {
	pod, err := k.pods.Pods(name.Namespace).Get(name.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	pods := k.client.CoreV1().Pods(pod.Namespace)
	switch {
	case pod.Spec.NodeName != "" && pod.Spec.NodeName != k.node:
		return nil // someone else's
	case pod.DeletionTimestamp != nil:
		// A bound pod is only deleted once its kubelet confirms with a
		// zero grace period.
		if pod.Spec.NodeName == "" {
			return nil // the API server deletes unbound pods by itself
		}
		err := pods.Delete(ctx, pod.Name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil // gone, or a new pod of the same name
		}
		return err
	case pod.Spec.NodeName == "":
		if pod.Spec.SchedulerName != corev1.DefaultSchedulerName {
			return nil // a way for a test to keep a pod Pending
		}
		// Schedule it: the binding makes the informer see it again, bound.
		err := pods.Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.node},
		}, metav1.CreateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return nil
	}
	status, changed := k.desiredStatus(pod)
	if !changed {
		return nil
	}
	update := pod.DeepCopy()
	update.Status = *status
	_, err = pods.UpdateStatus(ctx, update, metav1.UpdateOptions{})
	return err
}

// desiredStatus is the status a kubelet whose containers all start at once
// would report. Conditions it doesn't own (such as levee's) are kept.
// Timestamps are only set on change, so a second call changes nothing.
func (k *fakeKubelet) desiredStatus(pod *corev1.Pod) (*corev1.PodStatus, bool) {
	s := pod.Status.DeepCopy()
	changed := false
	now := metav1.Now()
	if s.Phase != corev1.PodRunning {
		s.Phase, changed = corev1.PodRunning, true
	}
	if s.HostIP == "" {
		s.HostIP, s.HostIPs, changed = nodeIP, []corev1.HostIP{{IP: nodeIP}}, true
	}
	if s.PodIP == "" {
		ip := k.ips.next()
		s.PodIP, s.PodIPs, changed = ip, []corev1.PodIP{{IP: ip}}, true
	}
	if s.StartTime == nil {
		s.StartTime, changed = &now, true
	}
	if len(s.InitContainerStatuses) != len(pod.Spec.InitContainers) {
		s.InitContainerStatuses, changed = nil, true
		for _, c := range pod.Spec.InitContainers {
			s.InitContainerStatuses = append(s.InitContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: containerID(pod, c.Name),
				State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
					ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: now}},
			})
		}
	}
	if len(s.ContainerStatuses) != len(pod.Spec.Containers) {
		s.ContainerStatuses, changed = nil, true
		started := true
		for _, c := range pod.Spec.Containers {
			s.ContainerStatuses = append(s.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, ImageID: c.Image, ContainerID: containerID(pod, c.Name),
				Ready: true, Started: &started,
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
	}

	setCondition := func(c corev1.PodCondition) {
		for i := range s.Conditions {
			old := &s.Conditions[i]
			if old.Type != c.Type {
				continue
			}
			if old.Status != c.Status || old.Reason != c.Reason || old.Message != c.Message {
				if old.Status == c.Status {
					c.LastTransitionTime = old.LastTransitionTime
				} else {
					c.LastTransitionTime = now
				}
				*old, changed = c, true
			}
			return
		}
		c.LastTransitionTime = now
		s.Conditions, changed = append(s.Conditions, c), true
	}
	for _, t := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodReadyToStartContainers,
		corev1.PodInitialized, corev1.ContainersReady} {
		setCondition(corev1.PodCondition{Type: t, Status: corev1.ConditionTrue})
	}
	setCondition(readyCondition(pod.Spec.ReadinessGates, s.Conditions))
	return s, changed
}

func containerID(pod *corev1.Pod, container string) string {
	return fmt.Sprintf("fake://%s-%s", pod.UID, container)
}

// readyCondition is the kubelet's rule (pkg/kubelet/status): with every
// container ready, the pod is Ready when each readiness gate's condition
// exists and is True; the messages match the kubelet's.
func readyCondition(gates []corev1.PodReadinessGate, conditions []corev1.PodCondition) corev1.PodCondition {
	var unready []string
	for _, gate := range gates {
		var found *corev1.PodCondition
		for i := range conditions {
			if conditions[i].Type == gate.ConditionType {
				found = &conditions[i]
			}
		}
		switch {
		case found == nil:
			unready = append(unready, fmt.Sprintf("corresponding condition of pod readiness gate %q does not exist.", gate.ConditionType))
		case found.Status != corev1.ConditionTrue:
			unready = append(unready, fmt.Sprintf("the status of pod readiness gate %q is not \"True\", but %v", gate.ConditionType, found.Status))
		}
	}
	if len(unready) > 0 {
		return corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionFalse,
			Reason: "ReadinessGatesNotReady", Message: strings.Join(unready, ", ")}
	}
	return corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue}
}

// ipPool hands out addresses of a range in turn, skipping the network
// address; after the last one it starts over (tests don't run 65k pods).
type ipPool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	last   netip.Addr
}

func newIPPool(prefix netip.Prefix) *ipPool {
	prefix = prefix.Masked()
	return &ipPool{prefix: prefix, last: prefix.Addr()}
}

func (p *ipPool) next() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.last = p.last.Next()
	if !p.prefix.Contains(p.last) || !p.prefix.Contains(p.last.Next()) { // keep off the broadcast address
		p.last = p.prefix.Addr().Next()
	}
	return p.last.String()
}
