package computesdk_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// testCA is a certificate authority made for one test run.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(name string) (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"computesdk tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(48 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

// issue signs a leaf: a server certificate for dns and ips, or (server false)
// a client certificate. It returns the certificate and the key as PEM.
func (ca *testCA) issue(cn string, server bool, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	usage := x509.ExtKeyUsageClientAuth
	if server {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), nil
}

// tlsFiles are the PEM files one TLS daemon (or fake) and its clients use.
type tlsFiles struct {
	CA, ServerCert, ServerKey string // the CA that signed the server and the good client
	ClientCert, ClientKey     string // signed by CA
	OtherCA                   string // a CA that signed nothing of the server's
	OtherCert, OtherKey       string // a client certificate signed by OtherCA
}

// writeTLSFiles makes a CA, a server certificate for IP 127.0.0.1 and DNS
// localhost (or the names given), a client certificate, and a second CA with a
// client certificate of its own, all in dir.
func writeTLSFiles(dir string, dns ...string) (*tlsFiles, error) {
	ca, err := newTestCA("computesdk test CA")
	if err != nil {
		return nil, err
	}
	other, err := newTestCA("some other CA")
	if err != nil {
		return nil, err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1")}
	if len(dns) == 0 {
		dns = []string{"localhost"}
	} else {
		ips = nil
	}
	serverCert, serverKey, err := ca.issue("computesdkd", true, dns, ips)
	if err != nil {
		return nil, err
	}
	clientCert, clientKey, err := ca.issue("go-suite", false, nil, nil)
	if err != nil {
		return nil, err
	}
	otherCert, otherKey, err := other.issue("intruder", false, nil, nil)
	if err != nil {
		return nil, err
	}
	f := &tlsFiles{
		CA: filepath.Join(dir, "ca.pem"), ServerCert: filepath.Join(dir, "server.pem"),
		ServerKey: filepath.Join(dir, "server.key"), ClientCert: filepath.Join(dir, "client.pem"),
		ClientKey: filepath.Join(dir, "client.key"), OtherCA: filepath.Join(dir, "other-ca.pem"),
		OtherCert: filepath.Join(dir, "other-client.pem"), OtherKey: filepath.Join(dir, "other-client.key"),
	}
	for path, data := range map[string][]byte{
		f.CA: ca.pem, f.ServerCert: serverCert, f.ServerKey: serverKey,
		f.ClientCert: clientCert, f.ClientKey: clientKey,
		f.OtherCA: other.pem, f.OtherCert: otherCert, f.OtherKey: otherKey,
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// freePort is a TCP port on loopback that nothing listened on a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
