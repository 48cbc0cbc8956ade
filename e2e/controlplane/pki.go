package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// keyPair is a certificate and its private key.
type keyPair struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

// pki holds every credential of one control plane. Files live in DIR/pki
// under the names kubeadm uses, so they are easy to recognise.
type pki struct {
	dir          string
	ca           *keyPair // signs serving and client certificates (--client-ca-file)
	frontProxyCA *keyPair // signs only the aggregator's client certificate (--requestheader-client-ca-file)
	admin        *keyPair // system:masters, for tests and kubectl
	kcm          *keyPair // system:masters too: see controllerManagerArgs
	fakeKubelet  *keyPair // system:masters: binds pods, writes node and pod status
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// newPKI generates a fresh PKI into dir. Keys are ECDSA P-256 (fast to make,
// accepted by Go, rustls and OpenSSL) except the service-account key, RSA as
// kubeadm makes it.
func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	var err error
	if p.ca, err = newCA("levee-e2e-ca"); err != nil {
		return nil, err
	}
	if p.frontProxyCA, err = newCA("levee-e2e-front-proxy-ca"); err != nil {
		return nil, err
	}
	apiserver, err := p.ca.issue(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		// 10.96.0.1 is the "kubernetes" Service's ClusterIP in 10.96.0.0/16.
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.IPv6loopback, net.ParseIP("10.96.0.1")},
	})
	if err != nil {
		return nil, err
	}
	if p.admin, err = p.ca.issue(clientTemplate("levee-e2e-admin", "system:masters")); err != nil {
		return nil, err
	}
	if p.kcm, err = p.ca.issue(clientTemplate("system:kube-controller-manager", "system:masters")); err != nil {
		return nil, err
	}
	if p.fakeKubelet, err = p.ca.issue(clientTemplate("levee-e2e-fake-kubelet", "system:masters")); err != nil {
		return nil, err
	}
	// kube-apiserver presents this one to aggregated API servers (levee);
	// they check it against the front-proxy CA and its CN against
	// --requestheader-allowed-names before trusting the X-Remote-* headers.
	frontProxyClient, err := p.frontProxyCA.issue(clientTemplate("front-proxy-client"))
	if err != nil {
		return nil, err
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}

	files := map[string][]byte{
		"ca.crt":                 p.ca.certPEM,
		"ca.key":                 p.ca.keyPEM,
		"front-proxy-ca.crt":     p.frontProxyCA.certPEM,
		"front-proxy-ca.key":     p.frontProxyCA.keyPEM,
		"apiserver.crt":          apiserver.certPEM,
		"apiserver.key":          apiserver.keyPEM,
		"admin.crt":              p.admin.certPEM,
		"admin.key":              p.admin.keyPEM,
		"front-proxy-client.crt": frontProxyClient.certPEM,
		"front-proxy-client.key": frontProxyClient.keyPEM,
		"sa.key":                 pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":                 pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
	}
	for name, data := range files {
		if err := os.WriteFile(p.path(name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func clientTemplate(user string, groups ...string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: groups},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

func newCA(cn string) (*keyPair, error) {
	return sign(&x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}, nil)
}

// issue makes a new key and a certificate for it from tmpl, signed by ca.
func (ca *keyPair) issue(tmpl *x509.Certificate) (*keyPair, error) {
	tmpl.KeyUsage |= x509.KeyUsageDigitalSignature
	return sign(tmpl, ca)
}

// sign makes a new key and a certificate for it from tmpl, signed by ca, or
// self-signed when ca is nil.
func sign(tmpl *x509.Certificate, ca *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	// Back-dated a little so a skewed clock between processes doesn't matter.
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(365 * 24 * time.Hour)

	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.cert, ca.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("certificate %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:     key,
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// writeKubeconfig writes a self-contained kubeconfig (credentials inline,
// so it still works when copied elsewhere) that authenticates as user.
func writeKubeconfig(path, server string, ca, user *keyPair) error {
	b64 := base64.StdEncoding.EncodeToString
	config := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: levee-e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: levee-e2e
  context:
    cluster: levee-e2e
    user: %s
current-context: levee-e2e
`, server, b64(ca.certPEM), user.cert.Subject.CommonName, b64(user.certPEM), b64(user.keyPEM), user.cert.Subject.CommonName)
	return os.WriteFile(path, []byte(config), 0o600)
}
