package main

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"computesdk/agent/agentpb"
)

func TestPing(t *testing.T) {
	var pong agentpb.PingReply
	call(t, &agentpb.Request{Op: &agentpb.Request_Ping{Ping: &agentpb.PingRequest{}}}, &pong)
	if int(pong.Pid) != os.Getpid() {
		t.Fatalf("pid %d, want %d", pong.Pid, os.Getpid())
	}
}

func TestStartAttachExitRoundTrip(t *testing.T) {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"}, Tag: "round-trip",
		Attach: true, KillOnClose: true}}})
	var info agentpb.ProcessInfo
	c.reply(&info)
	if !strings.HasPrefix(info.Id, "proc-") || info.Pid <= 0 || info.Tag != "round-trip" ||
		len(info.Args) != 3 || info.StartUnixMs <= 0 {
		t.Fatalf("started: %v", &info)
	}
	got := c.follow()
	if string(got.stdout) != "hi\n" || string(got.stderr) != "oops\n" {
		t.Fatalf("stdout %q, stderr %q", got.stdout, got.stderr)
	}
	if got.exit.ExitCode != 3 || got.exit.Signal != 0 || got.exit.TimedOut || got.exit.DurationMs < 0 {
		t.Fatalf("exit %v", got.exit)
	}

	// Re-attached after the exit, from the start: the same bytes, counted.
	again, out := attach(t, &agentpb.AttachRequest{Id: info.Id})
	if again.Running || again.Exit.GetExitCode() != 3 || again.StdoutBytes != 3 || again.StderrBytes != 5 {
		t.Fatalf("re-attached: %v", again)
	}
	if string(out.stdout) != "hi\n" || string(out.stderr) != "oops\n" || out.exit.ExitCode != 3 {
		t.Fatalf("re-attached: %q %q %v", out.stdout, out.stderr, out.exit)
	}
	// From offsets: only what follows them.
	_, out = attach(t, &agentpb.AttachRequest{Id: info.Id, StdoutOffset: 1, StderrOffset: 5})
	if string(out.stdout) != "i\n" || len(out.stderr) != 0 || out.exit.ExitCode != 3 {
		t.Fatalf("from offsets 1, 5: %q %q %v", out.stdout, out.stderr, out.exit)
	}
	_, out = attach(t, &agentpb.AttachRequest{Id: info.Id, NoOutput: true})
	if len(out.stdout)+len(out.stderr) != 0 || out.exit.ExitCode != 3 {
		t.Fatalf("no_output: %q %q %v", out.stdout, out.stderr, out.exit)
	}

	var list agentpb.ListReply
	call(t, &agentpb.Request{Op: &agentpb.Request_List{List: &agentpb.ListRequest{}}}, &list)
	found := false
	for _, p := range list.Processes {
		if p.Id == info.Id {
			found = !p.Running && p.Exit.GetExitCode() == 3 && p.StdoutBytes == 3
		}
	}
	if !found {
		t.Fatalf("%s is not listed as exited: %v", info.Id, &list)
	}
}

func TestStartErrors(t *testing.T) {
	for _, tc := range []struct {
		req  *agentpb.StartRequest
		want agentpb.ErrorCode
	}{
		{&agentpb.StartRequest{}, codeInvalidArgument},
		{&agentpb.StartRequest{Args: []string{"/bin/true"}, Cwd: "/no/such/dir"}, codeCwdNotFound},
		{&agentpb.StartRequest{Args: []string{"no-such-command-here"}}, codeExecutableNotFound},
		{&agentpb.StartRequest{Args: []string{"/no/such/command"}}, codeExecutableNotFound},
	} {
		c := dial(t)
		c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: tc.req}})
		c.failure(tc.want)
	}
	sleeper := start(t, &agentpb.StartRequest{Args: []string{"sleep", "30"}, Tag: "only-one"})
	defer syscall.Kill(int(sleeper.Pid), syscall.SIGKILL)
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"sleep", "30"}, Tag: "only-one"}}})
	c.failure(codeTagInUse)

	c = dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Attach{Attach: &agentpb.AttachRequest{Id: "proc-0"}}})
	c.failure(codeProcessNotFound)
}

func signalReq(t *testing.T, id string, sig int32) *client {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Signal{Signal: &agentpb.SignalRequest{Id: id, Signal: sig}}})
	return c
}

func TestSignalDelivery(t *testing.T) {
	p := start(t, &agentpb.StartRequest{Args: []string{"sleep", "30"}})
	signalReq(t, p.Id, 0).failure(codeInvalidArgument)
	signalReq(t, p.Id, 65).failure(codeInvalidArgument)
	signalReq(t, "proc-0", 15).failure(codeProcessNotFound)
	signalReq(t, p.Id, int32(syscall.SIGTERM)).reply(&agentpb.Ack{})
	_, out := attach(t, &agentpb.AttachRequest{Id: p.Id})
	if out.exit.ExitCode != -1 || out.exit.Signal != int32(syscall.SIGTERM) {
		t.Fatalf("after SIGTERM: %v", out.exit)
	}
	signalReq(t, p.Id, 15).failure(codeProcessExited)

	// A signal frame on a following connection.
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"sleep", "30"}, Attach: true, KillOnClose: true}}})
	c.reply(&agentpb.ProcessInfo{})
	c.sendMsg(frameSignal, &agentpb.SignalFrame{Signal: int32(syscall.SIGKILL)})
	if got := c.follow(); got.exit.Signal != int32(syscall.SIGKILL) || got.exit.ExitCode != -1 {
		t.Fatalf("after a SIGKILL frame: %v", got.exit)
	}
}

func TestKillOnCloseKillsWhenTheReaderGoes(t *testing.T) {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"sleep", "30"}, Attach: true, KillOnClose: true}}})
	var info agentpb.ProcessInfo
	c.reply(&info)
	c.nc.Close()
	_, out := attach(t, &agentpb.AttachRequest{Id: info.Id})
	if out.exit.Signal != int32(syscall.SIGKILL) {
		t.Fatalf("after the reader left: %v", out.exit)
	}
}

func TestKillAll(t *testing.T) {
	a := start(t, &agentpb.StartRequest{Args: []string{"sleep", "30"}})
	b := start(t, &agentpb.StartRequest{Args: []string{"sleep", "30"}})
	call(t, &agentpb.Request{Op: &agentpb.Request_Killall{Killall: &agentpb.KillAllRequest{Signal: 9}}}, &agentpb.Ack{})
	for _, p := range []*agentpb.ProcessInfo{a, b} {
		if _, out := attach(t, &agentpb.AttachRequest{Id: p.Id}); out.exit.Signal != 9 {
			t.Fatalf("%s after killall: %v", p.Id, out.exit)
		}
	}
}

func TestStdinFramesOnAFollowingConnection(t *testing.T) {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"cat"}, Stdin: true, Attach: true, KillOnClose: true}}})
	c.reply(&agentpb.ProcessInfo{})
	c.send(frameStdin, []byte("ping\n"))
	c.send(frameStdin, []byte("pong\n"))
	c.send(frameClose, nil)
	got := c.follow()
	if string(got.stdout) != "ping\npong\n" || got.exit.ExitCode != 0 {
		t.Fatalf("cat: %q %v", got.stdout, got.exit)
	}
}

func stdin(t *testing.T, id string, data []byte, closeAfter bool) *client {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Stdin{Stdin: &agentpb.StdinRequest{Id: id, Close: closeAfter}}})
	c.send(frameStdin, data)
	return c
}

func TestStdinOperation(t *testing.T) {
	p := start(t, &agentpb.StartRequest{Args: []string{"cat"}, Stdin: true})
	stdin(t, p.Id, []byte("abc"), false).reply(&agentpb.Ack{})
	stdin(t, p.Id, []byte("def"), true).reply(&agentpb.Ack{})
	stdin(t, p.Id, []byte("late"), false).failure(codeStdinClosed)
	_, out := attach(t, &agentpb.AttachRequest{Id: p.Id})
	if string(out.stdout) != "abcdef" || out.exit.ExitCode != 0 {
		t.Fatalf("cat: %q %v", out.stdout, out.exit)
	}
	// Without a stdin pipe, or without the frame that must follow the request.
	q := start(t, &agentpb.StartRequest{Args: []string{"sleep", "30"}})
	defer syscall.Kill(int(q.Pid), syscall.SIGKILL)
	stdin(t, q.Id, []byte("x"), false).failure(codeStdinClosed)
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Stdin{Stdin: &agentpb.StdinRequest{Id: q.Id}}})
	c.send(frameSignal, nil)
	c.failure(codeInvalidArgument)
}

func TestTimeoutKillsTheProcessGroup(t *testing.T) {
	c := dial(t)
	c.request(&agentpb.Request{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{
		Args: []string{"/bin/sh", "-c", "sleep 30 & wait"}, TimeoutMs: 50, Attach: true}}})
	c.reply(&agentpb.ProcessInfo{})
	t0 := time.Now()
	got := c.follow()
	if !got.exit.TimedOut || got.exit.Signal != 9 || time.Since(t0) > 5*time.Second {
		t.Fatalf("after the timeout: %v in %v", got.exit, time.Since(t0))
	}
}
