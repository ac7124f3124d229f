package main

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	"computesdk/agent/agentpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// endless hands out bytes forever and counts them.
type endless struct{ n int }

func (e *endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	e.n += len(p)
	return len(p), nil
}

func TestReadFrameRefusesAnOversizedFrameWithoutAllocatingIt(t *testing.T) {
	for _, n := range []uint32{maxFrame + 1, 1 << 31, 0xffffffff} {
		body := &endless{}
		r := io.MultiReader(bytes.NewReader(frame(frameRequest, nil)[:1]),
			bytes.NewReader([]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), body)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		_, b, err := readFrame(r)
		runtime.ReadMemStats(&after)
		if err == nil || b != nil {
			t.Fatalf("a frame of %d bytes was accepted", n)
		}
		if body.n != 0 {
			t.Fatalf("read %d payload bytes of a refused frame", body.n)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<10 {
			t.Fatalf("refusing a frame of %d bytes allocated %d bytes", n, grew)
		}
	}
}

func TestReadFrameTruncated(t *testing.T) {
	whole := frame(frameStdout, []byte("0123456789"))
	if kind, b, err := readFrame(bytes.NewReader(whole)); err != nil || kind != frameStdout || string(b) != "0123456789" {
		t.Fatalf("a whole frame: %q %q %v", kind, b, err)
	}
	if _, _, err := readFrame(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("no frame: %v, want EOF", err)
	}
	for _, cut := range []int{1, 3, 4, 5 + 4, len(whole) - 1} {
		_, _, err := readFrame(bytes.NewReader(whole[:cut]))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("a frame cut at %d bytes: %v, want ErrUnexpectedEOF", cut, err)
		}
	}
	if kind, b, err := readFrame(bytes.NewReader(frame(frameClose, nil))); err != nil || kind != frameClose || len(b) != 0 {
		t.Fatalf("an empty frame: %q %q %v", kind, b, err)
	}
}

// badUTF8Start is a Request{start: {args: ["\xff"]}}: protobuf refuses non-UTF-8 strings.
var badUTF8Start = protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType),
	protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xff}))

var garbage = [][]byte{
	nil,                            // no operation
	{0xff},                         // a truncated tag
	{0x0a},                         // ping, without its length
	{0x0a, 0x05, 0x00},             // ping, shorter than its length
	{0x12, 0x02, 0x0a, 0x09},       // start whose args are cut off
	{0x0f},                         // field 1 with wire type 7, which does not exist
	{0x00, 0x00},                   // field number 0
	{0x42, 0x00},                   // only an unknown field (8): no operation
	[]byte(`{"op":"ping"}`),        // the old JSON wire
	bytes.Repeat([]byte{0x80}, 20), // an overlong varint
	badUTF8Start,
}

func TestDecodeRequestRefusesGarbage(t *testing.T) {
	for _, body := range garbage {
		req, err := decodeRequest(body)
		var ae *agentError
		if !errors.As(err, &ae) || ae.code != codeInvalidArgument || req != nil {
			t.Fatalf("decodeRequest(%q) = %v, %v; want INVALID_ARGUMENT", body, req, err)
		}
	}
	b, _ := proto.Marshal(&agentpb.Request{Op: &agentpb.Request_Signal{
		Signal: &agentpb.SignalRequest{Id: "proc-1", Signal: 15}}})
	req, err := decodeRequest(b)
	if err != nil || req.GetSignal().GetId() != "proc-1" || req.GetSignal().GetSignal() != 15 {
		t.Fatalf("a good request: %v, %v", req, err)
	}
}

func TestGarbageOverTheWireIsInvalidArgument(t *testing.T) {
	for _, body := range garbage {
		c := dial(t)
		c.send(frameRequest, body)
		c.failure(codeInvalidArgument)
	}
	// A connection that does not start with a request is closed without a word.
	c := dial(t)
	c.send(frameStdin, []byte("hi"))
	if _, _, err := readFrame(c.nc); err != io.EOF {
		t.Fatalf("after a stray frame: %v, want EOF", err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, body := range garbage {
		f.Add(body)
	}
	for _, r := range []*agentpb.Request{
		{Op: &agentpb.Request_Ping{Ping: &agentpb.PingRequest{}}},
		{Op: &agentpb.Request_Start{Start: &agentpb.StartRequest{Args: []string{"sh", "-c", "echo hi"},
			Env: []string{"A=b"}, Cwd: "/tmp", TimeoutMs: 5, Stdin: true, Tag: "t", Attach: true,
			KillOnClose: true, NoOutput: true}}},
		{Op: &agentpb.Request_Attach{Attach: &agentpb.AttachRequest{Id: "proc-1", StdoutOffset: 3,
			StderrOffset: -1, NoOutput: true, KillOnClose: true}}},
		{Op: &agentpb.Request_Signal{Signal: &agentpb.SignalRequest{Id: "proc-1", Signal: 9}}},
		{Op: &agentpb.Request_Stdin{Stdin: &agentpb.StdinRequest{Id: "proc-1", Close: true}}},
		{Op: &agentpb.Request_List{List: &agentpb.ListRequest{}}},
		{Op: &agentpb.Request_Killall{Killall: &agentpb.KillAllRequest{Signal: 15}}},
	} {
		b, err := proto.Marshal(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeRequest(body)
		if err != nil {
			var ae *agentError
			if !errors.As(err, &ae) || ae.code != codeInvalidArgument || req != nil {
				t.Fatalf("decodeRequest(%q): %v, %v", body, req, err)
			}
			return
		}
		if req.Op == nil {
			t.Fatalf("decodeRequest(%q) accepted a request without an operation", body)
		}
		// What was accepted encodes again and means the same.
		again, err := proto.Marshal(req)
		if err != nil {
			t.Fatalf("re-encoding %v: %v", req, err)
		}
		back, err := decodeRequest(again)
		if err != nil || !proto.Equal(req, back) {
			t.Fatalf("round trip of %v: %v, %v", req, back, err)
		}
	})
}
