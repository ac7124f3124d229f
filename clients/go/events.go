package computesdk

import (
	"context"
	"errors"
	"iter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/computesdk/computesdk/clients/go/api/events/v1"
)

// Event is one lifecycle event; Sequence orders every event the daemon emits.
type Event struct {
	Sequence   uint64
	Time       time.Time
	SandboxID  string
	Type       string
	Message    string
	Attributes map[string]string
}

func eventFrom(p *eventsv1.Event) Event {
	return Event{Sequence: p.GetSequence(), Time: tsTime(p.GetTime()), SandboxID: p.GetSandboxId(),
		Type: p.GetType(), Message: p.GetMessage(), Attributes: p.GetAttributes()}
}

// EventOption filters Events.
type EventOption func(*eventsv1.SubscribeEventsRequest)

func ForSandboxes(ids ...string) EventOption {
	return func(r *eventsv1.SubscribeEventsRequest) { r.SandboxIds = ids }
}

func OfTypes(types ...string) EventOption {
	return func(r *eventsv1.SubscribeEventsRequest) { r.Types = types }
}

// After resumes after this sequence number.
func After(seq uint64) EventOption {
	return func(r *eventsv1.SubscribeEventsRequest) { r.AfterSequence = seq }
}

// History replays what is stored and ends instead of following new events.
func History() EventOption {
	return func(r *eventsv1.SubscribeEventsRequest) { r.NoFollow = true }
}

// Events yields lifecycle events until ctx ends. It survives daemon restarts:
// it reconnects by itself and resumes after the last sequence it yielded, so
// nothing is lost or repeated.
func (c *Client) Events(ctx context.Context, opts ...EventOption) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		req := &eventsv1.SubscribeEventsRequest{}
		for _, o := range opts {
			o(req)
		}
		lost := false
		if err := c.follow(ctx, req, func(ev Event) bool { return yield(ev, nil) }, nil, &lost); err != nil {
			yield(Event{}, err)
		}
	}
}

// follow streams events to yield until ctx ends, yield says stop, or a
// History stream ends; it rides out the daemon going away, resuming after
// the last sequence yielded. Connection changes go to the client's handlers
// and to onState (may be nil); *lost says the connection is down, kept by
// the caller across calls. The error is one the caller must see.
func (c *Client) follow(ctx context.Context, req *eventsv1.SubscribeEventsRequest, yield func(Event) bool,
	onState func(ConnState), lost *bool) error {
	notify := func(s ConnState) {
		c.notify(s)
		if onState != nil {
			onState(s)
		}
	}
	backoff := 50 * time.Millisecond
	for {
		stream, err := c.Raw.Events.SubscribeEvents(ctx, req)
		for err == nil {
			var resp *eventsv1.SubscribeEventsResponse
			if resp, err = stream.Recv(); err != nil {
				break
			}
			if *lost {
				*lost = false
				notify(Connected)
			}
			backoff = 50 * time.Millisecond
			ev := eventFrom(resp.GetEvent())
			req.AfterSequence = ev.Sequence
			if !yield(ev) {
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if req.NoFollow && isEOF(err) {
			return nil
		}
		// A following stream only ends when the daemon goes away; anything
		// but that is the caller's error to see.
		if c.isClosed() || (!isEOF(err) && !daemonGone(err)) {
			return err
		}
		if !*lost {
			*lost = true
			notify(Disconnected)
		}
		notify(Reconnecting)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// daemonGone tells a call that failed because the daemon went away (or is on
// its way down, cancelling calls in flight) from one it refused.
func daemonGone(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, codeSentinel(codes.Aborted)) ||
		status.Code(err) == codes.Canceled
}

func tsTime(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}
