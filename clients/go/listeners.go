package computesdk

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"time"

	eventsv1 "github.com/computesdk/computesdk/clients/go/api/events/v1"
)

// listenerGrace is how long a destroyed sandbox's listeners wait for the
// "destroyed" event before they stop anyway.
const listenerGrace = 2 * time.Second

// Listener is a handler following one sandbox's events (On, OnError,
// OnResourceAlert). It reconnects by itself across daemon restarts and
// resumes after the last event it delivered.
type Listener struct {
	sandbox *Sandbox
	ctx     context.Context
	stop    context.CancelFunc
	done    chan struct{}

	mu     sync.Mutex
	cancel context.CancelFunc // the current stream's
	last   uint64
	err    error
}

// Stop ends the listener; it returns at once (Done says when it has ended),
// so a handler may call it.
func (l *Listener) Stop() { l.stop() }

// Done is closed once the listener has ended: Stop, its ctx, the sandbox's
// "destroyed" event, or an error (Err).
func (l *Listener) Done() <-chan struct{} { return l.done }

// Err is why the listener ended, when the daemon refused the stream (the
// sandbox is not there, a token without the scope); nil otherwise.
func (l *Listener) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// resume restarts the listener's stream now, after the last event it saw.
func (l *Listener) resume() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		l.cancel()
	}
}

// On calls h for each of the sandbox's events of type eventType ("" for all):
// past events first (so "created" and "ready" are seen after Compute), then
// new ones, until ctx ends, Stop, or the sandbox's "destroyed" event.
// "connected", "disconnected" and "reconnecting" are the connection's changes
// while the listener follows (Type set, Sequence 0). h runs on the listener's
// own goroutine, one event at a time.
func (s *Sandbox) On(ctx context.Context, eventType string, h func(Event)) *Listener {
	return s.listen(ctx, func(ev Event) {
		if eventType == "" || ev.Type == eventType {
			h(ev)
		}
	})
}

// SandboxEventError is what OnError handlers get. Type is "out-of-memory" (a
// process was OOM-killed), "connection-lost" (the connection to the daemon
// dropped, once per drop; Reconnect is the recovery), "corruption" (a disk,
// state or snapshot failed its check) or "error" (the sandbox failed).
type SandboxEventError struct {
	Type      string
	Message   string
	SandboxID string
	Event     *Event // the daemon's event; nil for connection-lost
}

func (e *SandboxEventError) Error() string {
	return "computesdk: sandbox " + e.SandboxID + ": " + e.Type + ": " + e.Message
}

// errorTypes are the daemon's event types OnError reports, under their own name.
var errorTypes = []string{"out-of-memory", "corruption", "error"}

// OnError calls h for the sandbox's errors (see SandboxEventError), past ones first.
func (s *Sandbox) OnError(ctx context.Context, h func(*SandboxEventError)) *Listener {
	return s.listen(ctx, func(ev Event) {
		switch {
		case ev.Type == Disconnected.String():
			h(&SandboxEventError{Type: "connection-lost", SandboxID: s.ID(),
				Message: "the connection to computesdkd at " + s.Client().Target() + " dropped"})
		case ev.Sequence != 0 && slices.Contains(errorTypes, ev.Type):
			h(&SandboxEventError{Type: ev.Type, Message: ev.Message, SandboxID: ev.SandboxID, Event: &ev})
		}
	})
}

// ResourceAlert is a "resourceAlert" event: Type "cpu", "memory" or "disk"
// crossed Threshold percent of its limit and is at Current percent.
type ResourceAlert struct {
	Type      string
	Current   float64
	Threshold float64
	Message   string
	Event     Event
}

// OnResourceAlert calls h for each alert SetAlertThresholds set up.
func (s *Sandbox) OnResourceAlert(ctx context.Context, h func(ResourceAlert)) *Listener {
	return s.On(ctx, "resourceAlert", func(ev Event) {
		current, _ := strconv.ParseFloat(ev.Attributes["current"], 64)
		threshold, _ := strconv.ParseFloat(ev.Attributes["threshold"], 64)
		h(ResourceAlert{Type: ev.Attributes["type"], Current: current, Threshold: threshold,
			Message: ev.Message, Event: ev})
	})
}

// listen starts a listener that gives deliver every event, connection changes included.
func (s *Sandbox) listen(ctx context.Context, deliver func(Event)) *Listener {
	ctx, stop := context.WithCancel(ctx)
	l := &Listener{sandbox: s, ctx: ctx, stop: stop, done: make(chan struct{})}
	s.mu.Lock()
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	go l.run(deliver)
	return l
}

func (l *Listener) run(deliver func(Event)) {
	defer close(l.done)
	defer l.stop()
	defer l.sandbox.forget(l)
	id := l.sandbox.ID()
	lost := false
	for l.ctx.Err() == nil {
		stream, cancel := context.WithCancel(l.ctx)
		l.mu.Lock()
		l.cancel = cancel
		req := &eventsv1.SubscribeEventsRequest{SandboxIds: []string{id}, AfterSequence: l.last}
		l.mu.Unlock()
		destroyed := false
		err := l.sandbox.Client().follow(stream, req, func(ev Event) bool {
			l.mu.Lock()
			l.last = ev.Sequence
			l.mu.Unlock()
			deliver(ev)
			destroyed = ev.Type == "destroyed"
			return !destroyed
		}, func(st ConnState) { deliver(Event{Type: st.String(), SandboxID: id, Time: time.Now()}) }, &lost)
		cancel()
		if destroyed || err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
			return
		}
		// The stream was cancelled: Stop or ctx (the loop ends), or resume (it goes on).
	}
}

func (s *Sandbox) forget(l *Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = slices.DeleteFunc(s.listeners, func(x *Listener) bool { return x == l })
}

// stopListeners stops every listener that has not ended within grace.
func (s *Sandbox) stopListeners(grace time.Duration) {
	s.mu.Lock()
	ls := slices.Clone(s.listeners)
	s.mu.Unlock()
	for _, l := range ls {
		go func() {
			select {
			case <-l.done:
			case <-time.After(grace):
				l.Stop()
			}
		}()
	}
}
