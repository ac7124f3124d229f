package main

import (
	"encoding/binary"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"computesdk/agent/agentpb"
	"google.golang.org/protobuf/proto"
)

// TestMain sets the agent up as main does, minus what needs PID 1 or a sandbox:
// a state dir, the segment size, the reaper and the file pool.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "agent-test-")
	if err != nil {
		panic(err)
	}
	stateDir = dir
	segmentCap = 32 << 20
	sigchld := make(chan os.Signal, 64)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go reap(sigchld)
	go files.run()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	serverOnce sync.Once
	serverPath string
)

// agentSocket serves connections as the agent does, on a Unix socket in a temp dir.
func agentSocket(t *testing.T) string {
	serverOnce.Do(func() {
		dir, err := os.MkdirTemp("", "agent-sock-")
		if err != nil {
			t.Fatal(err)
		}
		serverPath = filepath.Join(dir, "agent.sock")
		l, err := listen(-1, serverPath)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				nc, err := l.Accept()
				if err != nil {
					return
				}
				go serve(nc)
			}
		}()
	})
	return serverPath
}

// client is the daemon's end of one connection, with its own frame encoder.
type client struct {
	t  *testing.T
	nc net.Conn
}

func dial(t *testing.T) *client {
	t.Helper()
	nc, err := net.Dial("unix", agentSocket(t))
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc}
}

func frame(kind byte, payload []byte) []byte {
	b := make([]byte, 5, 5+len(payload))
	b[0] = kind
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

func (c *client) send(kind byte, payload []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(frame(kind, payload)); err != nil {
		c.t.Fatal(err)
	}
}

func (c *client) sendMsg(kind byte, m proto.Message) {
	c.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		c.t.Fatal(err)
	}
	c.send(kind, b)
}

func (c *client) request(r *agentpb.Request) { c.t.Helper(); c.sendMsg(frameRequest, r) }

func (c *client) recv() (byte, []byte) {
	c.t.Helper()
	kind, body, err := readFrame(c.nc)
	if err != nil {
		c.t.Fatalf("reading a frame: %v", err)
	}
	return kind, body
}

// reply reads the 'J' frame into m; an error frame fails the test.
func (c *client) reply(m proto.Message) {
	c.t.Helper()
	kind, body := c.recv()
	if kind == frameError {
		var e agentpb.Error
		proto.Unmarshal(body, &e)
		c.t.Fatalf("agent error %v: %s", e.Code, e.Message)
	}
	if kind != frameReply {
		c.t.Fatalf("frame %q, want a reply", kind)
	}
	if err := proto.Unmarshal(body, m); err != nil {
		c.t.Fatal(err)
	}
}

// failure reads the 'R' frame that must come next and checks its code.
func (c *client) failure(want agentpb.ErrorCode) *agentpb.Error {
	c.t.Helper()
	kind, body := c.recv()
	if kind != frameError {
		c.t.Fatalf("frame %q, want an error", kind)
	}
	var e agentpb.Error
	if err := proto.Unmarshal(body, &e); err != nil {
		c.t.Fatal(err)
	}
	if e.Code != want {
		c.t.Fatalf("error %v (%s), want %v", e.Code, e.Message, want)
	}
	return &e
}

type followed struct {
	stdout, stderr []byte
	exit           *agentpb.ExitStatus
}

// follow reads output frames up to the exit status.
func (c *client) follow() followed {
	c.t.Helper()
	var f followed
	for {
		kind, body := c.recv()
		switch kind {
		case frameStdout:
			f.stdout = append(f.stdout, body...)
		case frameStderr:
			f.stderr = append(f.stderr, body...)
		case frameExit:
			f.exit = &agentpb.ExitStatus{}
			if err := proto.Unmarshal(body, f.exit); err != nil {
				c.t.Fatal(err)
			}
			return f
		case frameError:
			var e agentpb.Error
			proto.Unmarshal(body, &e)
			c.t.Fatalf("agent error %v: %s", e.Code, e.Message)
		default:
			c.t.Fatalf("unexpected frame %q", kind)
		}
	}
}

// call sends one request on a new connection and reads its reply into m.
func call(t *testing.T, r *agentpb.Request, m proto.Message) {
	t.Helper()
	c := dial(t)
	c.request(r)
	c.reply(m)
}

func start(t *testing.T, s *agentpb.StartRequest) *agentpb.ProcessInfo {
	t.Helper()
	var info agentpb.ProcessInfo
	call(t, &agentpb.Request{Op: &agentpb.Request_Start{Start: s}}, &info)
	return &info
}

func attach(t *testing.T, a *agentpb.AttachRequest) (*agentpb.ProcessInfo, followed) {
	t.Helper()
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Attach{Attach: a}})
	var info agentpb.ProcessInfo
	c.reply(&info)
	return &info, c.follow()
}
