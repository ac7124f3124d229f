package main

// The wire to the daemon (proto/computesdk/agent/v1/agent.proto): frames of one
// type byte, a 4-byte big-endian length and the payload. Requests, replies,
// exit statuses, errors and signals are protobuf messages; stdin, stdout and
// stderr are raw bytes.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"computesdk/agent/agentpb"
	"google.golang.org/protobuf/proto"
)

// Frame types on the wire: one byte, then a 4-byte big-endian length, then the payload.
const (
	frameRequest = 'Q' // daemon -> agent: Request, always first
	frameStdin   = 'I' // daemon -> agent: stdin bytes
	frameClose   = 'C' // daemon -> agent: close stdin
	frameSignal  = 'K' // daemon -> agent: SignalFrame
	frameReply   = 'J' // agent -> daemon: the reply (PingReply, ProcessInfo, ListReply, Ack)
	frameStdout  = 'O' // agent -> daemon: stdout bytes
	frameStderr  = 'E' // agent -> daemon: stderr bytes
	frameExit    = 'X' // agent -> daemon: ExitStatus
	frameError   = 'R' // agent -> daemon: Error

	maxFrame = 8 << 20
)

const (
	codeInternal           = agentpb.ErrorCode_ERROR_CODE_INTERNAL
	codeInvalidArgument    = agentpb.ErrorCode_ERROR_CODE_INVALID_ARGUMENT
	codeProcessNotFound    = agentpb.ErrorCode_ERROR_CODE_PROCESS_NOT_FOUND
	codeExecutableNotFound = agentpb.ErrorCode_ERROR_CODE_EXECUTABLE_NOT_FOUND
	codeCwdNotFound        = agentpb.ErrorCode_ERROR_CODE_CWD_NOT_FOUND
	codeTagInUse           = agentpb.ErrorCode_ERROR_CODE_TAG_IN_USE
	codeProcessExited      = agentpb.ErrorCode_ERROR_CODE_PROCESS_EXITED
	codeStdinClosed        = agentpb.ErrorCode_ERROR_CODE_STDIN_CLOSED
	codeOutputTruncated    = agentpb.ErrorCode_ERROR_CODE_OUTPUT_TRUNCATED
	codeExecFailed         = agentpb.ErrorCode_ERROR_CODE_EXEC_FAILED
)

type agentError struct {
	code    agentpb.ErrorCode
	message string
}

func (e *agentError) Error() string { return e.code.String() + ": " + e.message }

func fail(code agentpb.ErrorCode, format string, args ...any) *agentError {
	return &agentError{code: code, message: fmt.Sprintf(format, args...)}
}

type conn struct {
	c  net.Conn
	wm sync.Mutex
}

// write sends one frame; header and payload go out in one writev.
func (c *conn) write(kind byte, payload []byte) error {
	c.wm.Lock()
	defer c.wm.Unlock()
	var hdr [5]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], uint32(len(payload)))
	bufs := net.Buffers{hdr[:], payload}
	_, err := bufs.WriteTo(c.c)
	return err
}

func (c *conn) writeMsg(kind byte, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return c.write(kind, b)
}

func (c *conn) writeErr(err error) {
	var ae *agentError
	if !errors.As(err, &ae) {
		ae = &agentError{code: codeInternal, message: err.Error()}
	}
	// A proto3 string must be UTF-8; an OS error can quote any bytes.
	c.writeMsg(frameError, &agentpb.Error{Code: ae.code,
		Message: strings.ToValidUTF8(ae.message, "\uFFFD")})
}

// readFrame reads one frame. A length over maxFrame is refused before anything is
// allocated for it.
func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes is too large", n)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return hdr[0], b, err
}

// decodeRequest parses the payload of a request frame. Anything but a Request
// naming one operation is INVALID_ARGUMENT.
func decodeRequest(body []byte) (*agentpb.Request, error) {
	req := &agentpb.Request{}
	if err := proto.Unmarshal(body, req); err != nil {
		return nil, fail(codeInvalidArgument, "bad request: %v", err)
	}
	if req.Op == nil {
		return nil, fail(codeInvalidArgument, "the request names no operation")
	}
	return req, nil
}
