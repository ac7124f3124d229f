package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"computesdk/agent/agentpb"
	"google.golang.org/protobuf/proto"
)

var testToken = []byte("0123456789abcdef0123456789abcdef")

// selfSigned is a per-sandbox certificate as the daemon makes one.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sandbox"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

type netAgent struct {
	gate *gate
	addr string
	pin  [32]byte // SHA-256 of the certificate, as the daemon pins it
}

// startNet serves the agent's wire on 127.0.0.1 behind TLS and the token proof.
func startNet(t *testing.T) *netAgent { return startNetWith(t, handshakeTimeout, banFirst) }

func startNetWith(t *testing.T, timeout, ban time.Duration) *netAgent {
	t.Helper()
	cert := selfSigned(t)
	s := &netServer{timeout: timeout, token: testToken, gate: newGate(ban),
		tlsConf: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go s.serveLoop(l)
	return &netAgent{gate: s.gate, addr: l.Addr().String(), pin: sha256.Sum256(cert.Certificate[0])}
}

// dialTLS is the daemon's TLS: no CA, the certificate's fingerprint pinned.
func (a *netAgent) dialTLS(t *testing.T) net.Conn {
	t.Helper()
	conf := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if sha256.Sum256(cs.PeerCertificates[0].Raw) != a.pin {
				return errors.New("not the pinned certificate")
			}
			return nil
		}}
	nc, err := tls.Dial("tcp", a.addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return nc
}

// hello reads the agent's nonce.
func hello(t *testing.T, nc net.Conn) []byte {
	t.Helper()
	kind, nonce, err := readFrame(nc)
	if err != nil || kind != frameHello || len(nonce) != nonceSize {
		t.Fatalf("hello: frame %q of %d bytes, %v", kind, len(nonce), err)
	}
	return nonce
}

// prove answers the nonce with token and returns the frame sent.
func prove(t *testing.T, nc net.Conn, token, nonceA []byte) []byte {
	t.Helper()
	nonceC := make([]byte, nonceSize)
	rand.Read(nonceC)
	f := frame(frameAuth, append(nonceC, proof(token, labelDaemon, nonceA, nonceC)...))
	if _, err := nc.Write(f); err != nil {
		t.Fatal(err)
	}
	return f
}

// refused: the agent closes the connection without sending anything.
func refused(t *testing.T, nc net.Conn) {
	t.Helper()
	var b [1]byte
	if n, err := nc.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("read %d bytes (%v), want the connection closed", n, err)
	}
}

func ping(t *testing.T, nc net.Conn) {
	t.Helper()
	c := &client{t: t, nc: nc}
	c.request(&agentpb.Request{Op: &agentpb.Request_Ping{Ping: &agentpb.PingRequest{}}})
	var r agentpb.PingReply
	c.reply(&r)
	if r.Pid != int32(os.Getpid()) {
		t.Fatalf("pid %d", r.Pid)
	}
}

func TestNetRightTokenServed(t *testing.T) {
	a := startNet(t)
	nc := a.dialTLS(t)
	nonceA := hello(t, nc)
	sent := prove(t, nc, testToken, nonceA)
	kind, mac, err := readFrame(nc)
	if err != nil || kind != frameAuth {
		t.Fatalf("agent's proof: %q %v", kind, err)
	}
	if want := proof(testToken, labelAgent, nonceA, sent[5:5+nonceSize]); string(mac) != string(want) {
		t.Fatal("the agent's proof does not check")
	}
	ping(t, nc)
	// and a process runs through it, as on the Unix socket
	c := &client{t: t, nc: a.handshaken(t)}
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"/bin/sh", "-c", "echo over tcp"}, Attach: true}}})
	var info agentpb.ProcessInfo
	c.reply(&info)
	if f := c.follow(); string(f.stdout) != "over tcp\n" || f.exit.ExitCode != 0 {
		t.Fatalf("stdout %q exit %v", f.stdout, f.exit)
	}
}

// handshaken is a connection past the proof.
func (a *netAgent) handshaken(t *testing.T) net.Conn {
	t.Helper()
	nc := a.dialTLS(t)
	prove(t, nc, testToken, hello(t, nc))
	if kind, _, err := readFrame(nc); err != nil || kind != frameAuth {
		t.Fatalf("agent's proof: %q %v", kind, err)
	}
	return nc
}

func TestNetWrongTokenRefused(t *testing.T) {
	a := startNet(t)
	nc := a.dialTLS(t)
	prove(t, nc, []byte("not the token, not the token, no"), hello(t, nc))
	refused(t, nc)
	ping(t, a.handshaken(t)) // the daemon's address is not banned by one failure
}

func TestNetRequestBeforeHandshakeRefused(t *testing.T) {
	a := startNet(t)
	nc := a.dialTLS(t)
	hello(t, nc)
	(&client{t: t, nc: nc}).request(&agentpb.Request{Op: &agentpb.Request_Ping{Ping: &agentpb.PingRequest{}}})
	refused(t, nc)
}

func TestNetNoHandshakeRefusedAfterDeadline(t *testing.T) {
	a := startNetWith(t, 200*time.Millisecond, banFirst)
	nc := a.dialTLS(t)
	hello(t, nc)
	refused(t, nc) // nothing sent: the agent hangs up on its own
	// a peer that never even starts TLS is cut off too
	raw, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadAll(raw); err != nil {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestNetOversizedFirstFrameRefused(t *testing.T) {
	a := startNet(t)
	for _, n := range []uint32{nonceSize + macSize + 1, 1 << 30} {
		nc := a.dialTLS(t)
		hello(t, nc)
		var hdr [5]byte
		hdr[0] = frameAuth
		binary.BigEndian.PutUint32(hdr[1:], n)
		nc.Write(hdr[:]) // the header alone: refused before any body is read
		refused(t, nc)
	}
}

func TestNetReplayedHandshakeRefused(t *testing.T) {
	a := startNet(t)
	nc := a.dialTLS(t)
	recorded := prove(t, nc, testToken, hello(t, nc))
	if kind, _, err := readFrame(nc); err != nil || kind != frameAuth {
		t.Fatalf("first use: %q %v", kind, err)
	}
	again := a.dialTLS(t)
	hello(t, again)
	again.Write(recorded)
	refused(t, again)
}

func TestNetPlaintextPeerRefused(t *testing.T) {
	a := startNet(t)
	raw, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	raw.Write(frame(frameRequest, mustMarshal(t, &agentpb.Request{Op: &agentpb.Request_Ping{Ping: &agentpb.PingRequest{}}})))
	b, _ := io.ReadAll(raw)
	if len(b) > 0 && b[0] == frameReply {
		t.Fatal("a plaintext request was served")
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// After failBurst failures an address is turned away at accept, before TLS.
func TestNetFailuresBanTheAddress(t *testing.T) {
	a := startNetWith(t, handshakeTimeout, time.Hour) // no race with a slow machine
	for i := 0; i < failBurst; i++ {
		nc := a.dialTLS(t)
		prove(t, nc, []byte("wrong wrong wrong wrong wrong wr"), hello(t, nc))
		refused(t, nc)
	}
	raw, err := net.Dial("tcp", a.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(20 * time.Second))
	if b, err := io.ReadAll(raw); len(b) != 0 || err != nil {
		t.Fatalf("banned address got %d bytes (%v)", len(b), err)
	}
}

// A kubelet's TCP probe (connect, close) from the node's address, which on a host
// daemon's cluster can be the daemon's own, is not a failed handshake.
func TestNetConnectAndCloseIsNotAFailure(t *testing.T) {
	a := startNetWith(t, handshakeTimeout, time.Hour)
	for i := 0; i < 3*failBurst; i++ {
		raw, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		raw.Close()
	}
	a.gate.settle(t, 3*failBurst)
	ping(t, a.handshaken(t))
}

func TestGateCapsAndBans(t *testing.T) {
	g := newGate(banFirst)
	now := time.Now()
	for i := 0; i < pendingPerAddr; i++ {
		if !g.admit("10.0.0.1", now) {
			t.Fatalf("slot %d refused", i)
		}
	}
	if g.admit("10.0.0.1", now) {
		t.Fatal("more handshakes in progress than pendingPerAddr")
	}
	if !g.admit("10.0.0.2", now) {
		t.Fatal("another address is held up by the first one's handshakes")
	}
	for i := 0; i < pendingPerAddr-failBurst; i++ {
		g.done("10.0.0.1", passed, now)
	}
	for i := 0; i < failBurst; i++ {
		g.done("10.0.0.1", failed, now)
	}
	if g.admit("10.0.0.1", now) {
		t.Fatal("not banned after failures")
	}
	if !g.admit("10.0.0.1", now.Add(banFirst)) {
		t.Fatal("still banned after the ban")
	}
	if g.peers["10.0.0.1"].ban != 2*banFirst {
		t.Fatal("the next ban does not double")
	}
}

func TestGateStaysBoundedAndOpen(t *testing.T) {
	g := newGate(time.Hour)
	now := time.Now()
	for i := 0; i < 3*trackedMax; i++ { // a spray of addresses, each banned
		key := net.IPv4(10, byte(i>>16), byte(i>>8), byte(i)).String()
		for j := 0; j < failBurst; j++ {
			if g.admit(key, now) {
				g.done(key, failed, now)
			}
		}
		if len(g.peers) > trackedMax {
			t.Fatalf("%d addresses tracked", len(g.peers))
		}
	}
	if !g.admit("10.250.0.1", now) {
		t.Fatal("a full table turned a new address away")
	}
}

func TestLoadTokenRefusesReadableFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "token")
	os.WriteFile(p, append(testToken, '\n'), 0o444)
	if _, err := loadToken(p); err == nil {
		t.Fatal("a world-readable token was taken")
	}
	os.Chmod(p, 0o400)
	if tok, err := loadToken(p); err != nil || string(tok) != string(testToken) {
		t.Fatalf("token %q, %v", tok, err)
	}
	os.WriteFile(p, []byte("short"), 0o400)
	if _, err := loadToken(p); err == nil {
		t.Fatal("a short token was taken")
	}
}

// settle waits until the gate has seen n connections from 127.0.0.1 end.
func (g *gate) settle(t *testing.T, n int) {
	t.Helper()
	for i := 0; ; i++ {
		g.mu.Lock()
		p := g.peers["127.0.0.1"]
		idle := p != nil && p.pending == 0 && g.seen >= n
		g.mu.Unlock()
		if idle {
			return
		}
		if i > 2000 {
			t.Fatal("the connections never ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
