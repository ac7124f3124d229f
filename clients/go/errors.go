package computesdk

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	errorsv1 "github.com/computesdk/computesdk/clients/go/api/errors/v1"
)

// errorDomain is ErrorInfo.domain of every reason the daemon sends.
const errorDomain = "computesdk.dev"

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

// GRPCStatus lets status.FromError and grpc interceptors see the status as the
// daemon sent it, ErrorInfo included (Raw calls return *Error too).
func (e *Error) GRPCStatus() *status.Status {
	st := status.New(e.Code, e.Message)
	if e.Reason == "" {
		return st
	}
	if with, err := st.WithDetails(&errdetails.ErrorInfo{Reason: e.Reason, Domain: errorDomain, Metadata: e.Metadata}); err == nil {
		return with
	}
	return st
}

// reasonSentinel names its reason by the generated enum value, so a sentinel
// for a reason the daemon does not send cannot compile.
func reasonSentinel(r errorsv1.Reason) *Error {
	return &Error{Reason: strings.TrimPrefix(r.String(), "REASON_")}
}

func codeSentinel(code codes.Code) *Error { return &Error{Code: code} }

// Sentinels by reason: the same reasons as the Python and TypeScript clients' typed errors.
var (
	ErrSandboxNotFound     = reasonSentinel(errorsv1.Reason_REASON_SANDBOX_NOT_FOUND)
	ErrTemplateNotFound    = reasonSentinel(errorsv1.Reason_REASON_TEMPLATE_NOT_FOUND)
	ErrTemplateBuildFailed = reasonSentinel(errorsv1.Reason_REASON_TEMPLATE_BUILD_FAILED)
	ErrProviderNotFound    = reasonSentinel(errorsv1.Reason_REASON_PROVIDER_NOT_FOUND)
	ErrProcessNotFound     = reasonSentinel(errorsv1.Reason_REASON_PROCESS_NOT_FOUND)
	ErrFileNotFound        = reasonSentinel(errorsv1.Reason_REASON_FILE_NOT_FOUND)
	ErrPathOutsideSandbox  = reasonSentinel(errorsv1.Reason_REASON_PATH_OUTSIDE_SANDBOX)
	ErrSandboxNotRunning   = reasonSentinel(errorsv1.Reason_REASON_SANDBOX_NOT_RUNNING)
	ErrPayloadTooLarge     = reasonSentinel(errorsv1.Reason_REASON_PAYLOAD_TOO_LARGE)
	ErrSandboxTerminated   = reasonSentinel(errorsv1.Reason_REASON_SANDBOX_TERMINATED)
	ErrFeatureUnsupported  = reasonSentinel(errorsv1.Reason_REASON_FEATURE_UNSUPPORTED)
	// Over TCP (code Unauthenticated): no "authorization: Bearer" metadata, a
	// token the daemon does not know, one revoked, one past its expiry.
	ErrTokenMissing = reasonSentinel(errorsv1.Reason_REASON_TOKEN_MISSING)
	ErrTokenInvalid = reasonSentinel(errorsv1.Reason_REASON_TOKEN_INVALID)
	ErrTokenRevoked = reasonSentinel(errorsv1.Reason_REASON_TOKEN_REVOKED)
	ErrTokenExpired = reasonSentinel(errorsv1.Reason_REASON_TOKEN_EXPIRED)
	// PermissionDenied: the token's scope (read < write < admin) does not cover the call.
	ErrScopeInsufficient = reasonSentinel(errorsv1.Reason_REASON_SCOPE_INSUFFICIENT)
	// The client's own reason, when no daemon answers: the daemon never sends it.
	ErrDaemonUnreachable = &Error{Reason: "DAEMON_UNREACHABLE"}
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
	// Every token refusal (ErrTokenMissing, ...) and every scope refusal.
	ErrUnauthenticated  = codeSentinel(codes.Unauthenticated)
	ErrPermissionDenied = codeSentinel(codes.PermissionDenied)
)

func daemonUnreachable(message string) *Error {
	return &Error{Code: codes.Unavailable, Reason: ErrDaemonUnreachable.Reason, Message: message}
}

// fromRPC turns a gRPC error into *Error. Context cancellation and end of
// stream pass through unchanged.
func fromRPC(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.Canceled {
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

// typedErrors and typedStreamErrors are the one place where a failed call's
// status becomes *Error: every call on the connection, Raw ones included,
// passes through them.
func typedErrors(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return fromRPC(invoker(ctx, method, req, reply, cc, opts...))
}

func typedStreamErrors(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, fromRPC(err)
	}
	return typedStream{s}, nil
}

// typedStream translates what a stream's calls fail with; io.EOF passes as is.
type typedStream struct{ grpc.ClientStream }

func (s typedStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return md, fromRPC(err)
}
func (s typedStream) SendMsg(m any) error { return fromRPC(s.ClientStream.SendMsg(m)) }
func (s typedStream) RecvMsg(m any) error { return fromRPC(s.ClientStream.RecvMsg(m)) }
func (s typedStream) CloseSend() error    { return fromRPC(s.ClientStream.CloseSend()) }
