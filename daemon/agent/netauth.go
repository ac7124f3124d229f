package main

// The network channel (opt-in: -listen-tcp). On Kubernetes a sandbox is a pod
// whose entrypoint is this agent, and the daemon reaches it over the pod
// network, where any other pod can connect too. So every TCP connection is
// TLS (a per-sandbox self-signed certificate whose SHA-256 the daemon pins)
// and then proves a per-sandbox token before a request is served:
//
//	agent  -> daemon  'H' nonceA (32 bytes, fresh per connection)
//	daemon -> agent   'A' nonceC (32) || HMAC-SHA256(token, "computesdk-agent/v1 daemon" || nonceA || nonceC)
//	agent  -> daemon  'A' HMAC-SHA256(token, "computesdk-agent/v1 agent" || nonceA || nonceC)
//
// then the usual wire (one Request per connection). The token never crosses
// the wire; a recorded proof fails against the next connection's nonce; the
// agent's own proof lets a daemon tell its agent from an impostor even on a
// plaintext channel. The first frame must be exactly an 'A' of 64 bytes: its
// header is checked before its body is read. TLS and the proof share one short
// deadline. A failed or slow handshake closes the connection without a word and
// counts against the peer's address; too many and that address is turned away
// at accept for a while (doubling, capped). Handshakes in progress are capped
// per address and in all, so a flood of idle connections cannot starve the
// daemon's.

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	frameHello = 'H' // agent -> daemon: the agent's nonce
	frameAuth  = 'A' // daemon -> agent: nonce and proof; agent -> daemon: its proof

	nonceSize    = 32
	macSize      = sha256.Size
	minTokenSize = 16
	maxTokenSize = 4096

	labelDaemon = "computesdk-agent/v1 daemon"
	labelAgent  = "computesdk-agent/v1 agent"
)

const (
	handshakeTimeout = 5 * time.Second // the default of -handshake-timeout
	banFirst         = 1 * time.Second // of -ban: the first time an address is turned away, for this long
	banMax           = 2 * time.Minute // and then doubling up to this (or -ban if longer)
	failBurst        = 5               // failed handshakes an address may have before it is turned away
	pendingPerAddr   = 16              // handshakes in progress per address
	pendingTotal     = 256             // and in all
	trackedMax       = 4096            // addresses remembered; beyond this idle ones are forgotten
)

// readSecret reads a file given once at start (a Kubernetes Secret volume). It
// refuses a file that others may read: the token is the sandbox's only key.
func readSecret(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o007 != 0 {
		return nil, fmt.Errorf("%s may be read by anyone (mode %v)", path, st.Mode().Perm())
	}
	return os.ReadFile(path)
}

func loadToken(path string) ([]byte, error) {
	b, err := readSecret(path)
	if err != nil {
		return nil, err
	}
	tok := []byte(strings.TrimSpace(string(b)))
	if len(tok) < minTokenSize || len(tok) > maxTokenSize {
		return nil, fmt.Errorf("the token in %s must be %d to %d bytes", path, minTokenSize, maxTokenSize)
	}
	return tok, nil
}

func loadTLS(certFile, keyFile string) (*tls.Config, error) {
	certPEM, err := readSecret(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readSecret(keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		SessionTicketsDisabled: true}, nil // every connection shows the pinned certificate
}

func proof(token []byte, label string, nonceA, nonceC []byte) []byte {
	m := hmac.New(sha256.New, token)
	m.Write([]byte(label))
	m.Write(nonceA)
	m.Write(nonceC)
	return m.Sum(nil)
}

var errHandshake = errors.New("handshake refused")

// authenticate runs the agent's side of the proof on c.
func authenticate(c net.Conn, token []byte) error {
	nonceA := make([]byte, nonceSize)
	if _, err := rand.Read(nonceA); err != nil {
		return err
	}
	w := &conn{c: c}
	if err := w.write(frameHello, nonceA); err != nil {
		return err
	}
	var hdr [5]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	n := uint32(hdr[1])<<24 | uint32(hdr[2])<<16 | uint32(hdr[3])<<8 | uint32(hdr[4])
	if hdr[0] != frameAuth || n != nonceSize+macSize {
		return errHandshake
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(c, body); err != nil {
		return err
	}
	nonceC, mac := body[:nonceSize], body[nonceSize:]
	if !hmac.Equal(mac, proof(token, labelDaemon, nonceA, nonceC)) {
		return errHandshake
	}
	return w.write(frameAuth, proof(token, labelAgent, nonceA, nonceC))
}

// gate admits connections by remote address: it bans an address after failBurst
// failed handshakes and caps the handshakes in progress.
type gate struct {
	first   time.Duration // the first ban
	mu      sync.Mutex
	peers   map[string]*peer
	pending int
	seen    int // handshakes ended, however
}

type peer struct {
	fails   int
	pending int
	until   time.Time     // turned away until then
	ban     time.Duration // the next ban
}

func newGate(first time.Duration) *gate { return &gate{first: first, peers: map[string]*peer{}} }

// addrKey is the remote IP, whole: on a cluster each pod has its own, and a
// coarser key (an IPv6 /64 is often a node's whole pod range) would let a
// hostile pod get the daemon's own address banned.
func addrKey(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	return a.String()
}

// admit reserves a handshake slot for key, or says no.
func (g *gate) admit(key string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peers[key]
	if p == nil {
		if len(g.peers) >= trackedMax {
			g.prune(now)
		}
		p = &peer{ban: g.first}
		g.peers[key] = p
	}
	if now.Before(p.until) || p.pending >= pendingPerAddr || g.pending >= pendingTotal {
		return false
	}
	p.pending++
	g.pending++
	return true
}

type outcome int

const (
	passed outcome = iota
	failed
	hungUp // closed before sending a byte: a TCP probe or a port scan, not a guess
)

// done releases the slot and records the outcome.
func (g *gate) done(key string, o outcome, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p := g.peers[key]
	if p == nil {
		return
	}
	p.pending--
	g.pending--
	g.seen++
	switch o {
	case passed:
		p.fails, p.ban = 0, g.first
		return
	case hungUp:
		return
	}
	p.fails++
	if p.fails >= failBurst {
		p.fails = 0
		p.until = now.Add(p.ban)
		p.ban = min(2*p.ban, max(banMax, g.first))
	}
}

// prune forgets idle addresses; if all are banned or failing, some of those
// (never one with a handshake in progress, and there are at most pendingTotal):
// the table stays bounded, and a full one never turns a new address away.
func (g *gate) prune(now time.Time) {
	for k, p := range g.peers {
		if p.pending == 0 && p.fails == 0 && !now.Before(p.until) {
			delete(g.peers, k)
		}
	}
	for k, p := range g.peers {
		if len(g.peers) < trackedMax*3/4 {
			return
		}
		if p.pending == 0 {
			delete(g.peers, k)
		}
	}
}

// netServer serves the agent's wire on TCP behind TLS (when tlsConf is set) and
// the token proof.
type netServer struct {
	timeout time.Duration // for TLS and the proof
	token   []byte
	tlsConf *tls.Config
	gate    *gate
}

func (s *netServer) serveLoop(l net.Listener) error {
	for {
		nc, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			time.Sleep(10 * time.Millisecond) // out of fds, say: do not spin
			continue
		}
		go s.handshake(nc)
	}
}

func (s *netServer) handshake(nc net.Conn) {
	key := addrKey(nc.RemoteAddr())
	if !s.gate.admit(key, time.Now()) {
		nc.Close()
		return
	}
	cc := &counted{Conn: nc}
	c, err := s.secure(cc)
	switch {
	case err == nil:
		s.gate.done(key, passed, time.Now())
	case cc.n == 0 && errors.Is(err, io.EOF):
		s.gate.done(key, hungUp, time.Now())
	default:
		s.gate.done(key, failed, time.Now())
	}
	if err != nil {
		nc.Close()
		return
	}
	serve(c)
}

// counted tells a peer that closed before sending anything (a kubelet's TCP probe,
// say, which must not get its node's address banned) from one that tried.
type counted struct {
	net.Conn
	n int64
}

func (c *counted) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n += int64(n)
	return n, err
}

func (s *netServer) secure(nc net.Conn) (net.Conn, error) {
	if err := nc.SetDeadline(time.Now().Add(s.timeout)); err != nil {
		return nil, err
	}
	c := nc
	if s.tlsConf != nil {
		tc := tls.Server(nc, s.tlsConf)
		if err := tc.Handshake(); err != nil {
			return nil, err
		}
		c = tc
	}
	if err := authenticate(c, s.token); err != nil {
		return nil, err
	}
	return c, nc.SetDeadline(time.Time{})
}

type tcpFlags struct {
	addr, tokenFile, certFile, keyFile string
	plaintext                          bool
	timeout, ban                       time.Duration
}

func netFlags() *tcpFlags {
	f := &tcpFlags{}
	flag.StringVar(&f.addr, "listen-tcp", "", "serve on this TCP address (e.g. :7070) behind TLS and the token proof")
	flag.StringVar(&f.tokenFile, "token-file", "", "with -listen-tcp: the per-sandbox token, read once at start")
	flag.StringVar(&f.certFile, "tls-cert", "", "with -listen-tcp: the per-sandbox certificate (PEM), read once")
	flag.StringVar(&f.keyFile, "tls-key", "", "with -listen-tcp: its private key (PEM), read once")
	flag.BoolVar(&f.plaintext, "plaintext", false, "with -listen-tcp on a loopback address: no TLS (tests)")
	flag.DurationVar(&f.timeout, "handshake-timeout", handshakeTimeout, "with -listen-tcp: TLS and the proof must be done within this")
	flag.DurationVar(&f.ban, "ban", banFirst, "with -listen-tcp: an address with repeated failed handshakes is turned away this long, then doubling")
	return f
}

// open reads the secrets (and forgets where they were) and listens.
func (f *tcpFlags) open(listenFd int, sock string) (*netServer, net.Listener, error) {
	if listenFd >= 0 || sock != "" {
		return nil, nil, errors.New("-listen-tcp excludes -listen-fd and -socket")
	}
	if f.tokenFile == "" {
		return nil, nil, errors.New("-listen-tcp needs -token-file")
	}
	tok, err := loadToken(f.tokenFile)
	if err != nil {
		return nil, nil, err
	}
	if f.timeout <= 0 || f.ban < 0 {
		return nil, nil, errors.New("-handshake-timeout must be positive and -ban not negative")
	}
	s := &netServer{timeout: f.timeout, token: tok, gate: newGate(f.ban)}
	switch {
	case f.certFile != "" && f.keyFile != "" && !f.plaintext:
		if s.tlsConf, err = loadTLS(f.certFile, f.keyFile); err != nil {
			return nil, nil, err
		}
	case f.certFile == "" && f.keyFile == "" && f.plaintext:
		// the pod network is not private: cleartext only where nobody else listens
		host, _, err := net.SplitHostPort(f.addr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			return nil, nil, errors.New("-plaintext is for a loopback address only")
		}
	default:
		return nil, nil, errors.New("-listen-tcp needs -tls-cert and -tls-key, or -plaintext")
	}
	*f = tcpFlags{addr: f.addr}
	l, err := net.Listen("tcp", f.addr)
	return s, l, err
}
