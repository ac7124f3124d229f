package computesdk

import (
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is every failure the daemon reports: a canonical gRPC code plus the
// stable reason from google.rpc.ErrorInfo.
//
// Compare with errors.Is against the sentinels below, which match on the
// reason (ErrSandboxNotFound) or, for the generic ones, on the code (ErrNotFound).
type Error struct {
	Code     codes.Code
	Reason   string
	Message  string
	Metadata map[string]string
}

func (e *Error) Error() string {
	label := e.Reason
	if label == "" {
		label = e.Code.String()
	}
	return fmt.Sprintf("computesdk: %s: %s", label, e.Message)
}

// Is matches a sentinel: by reason when the sentinel has one, else by code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	if t.Reason != "" {
		return t.Reason == e.Reason
	}
	return t.Code == e.Code
}

// GRPCStatus lets status.FromError and grpc interceptors see the original status.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

func reasonSentinel(reason string) *Error { return &Error{Reason: reason} }
func codeSentinel(code codes.Code) *Error { return &Error{Code: code} }

// Sentinels by reason.
var (
	ErrSandboxNotFound    = reasonSentinel("SANDBOX_NOT_FOUND")
	ErrTemplateNotFound   = reasonSentinel("TEMPLATE_NOT_FOUND")
	ErrProviderNotFound   = reasonSentinel("PROVIDER_NOT_FOUND")
	ErrProcessNotFound    = reasonSentinel("PROCESS_NOT_FOUND")
	ErrFileNotFound       = reasonSentinel("FILE_NOT_FOUND")
	ErrPathOutsideSandbox = reasonSentinel("PATH_OUTSIDE_SANDBOX")
	ErrSandboxNotRunning  = reasonSentinel("SANDBOX_NOT_RUNNING")
	ErrPayloadTooLarge    = reasonSentinel("PAYLOAD_TOO_LARGE")
	ErrSandboxTerminated  = reasonSentinel("SANDBOX_TERMINATED")
	ErrFeatureUnsupported = reasonSentinel("FEATURE_UNSUPPORTED")
	ErrDaemonUnreachable  = reasonSentinel("DAEMON_UNREACHABLE")
)

// Sentinels by code, for callers that only care about the class of failure.
var (
	ErrNotFound           = codeSentinel(codes.NotFound)
	ErrInvalidArgument    = codeSentinel(codes.InvalidArgument)
	ErrFailedPrecondition = codeSentinel(codes.FailedPrecondition)
	ErrAlreadyExists      = codeSentinel(codes.AlreadyExists)
	ErrResourceExhausted  = codeSentinel(codes.ResourceExhausted)
	ErrUnimplemented      = codeSentinel(codes.Unimplemented)
	ErrUnavailable        = codeSentinel(codes.Unavailable)
	ErrDeadlineExceeded   = codeSentinel(codes.DeadlineExceeded)
)

// fromRPC turns a gRPC error into *Error, once, at the boundary. Context
// cancellation and end of stream pass through unchanged.
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.Canceled {
		return err
	}
	out := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			out.Reason, out.Metadata = info.GetReason(), info.GetMetadata()
		}
	}
	return out
}
