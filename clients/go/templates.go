package computesdk

import (
	"context"
	"errors"
	"iter"
	"strings"

	templatev1 "github.com/computesdk/computesdk/clients/go/api/template/v1"
)

// Template is a template sandboxes start from (predefined or built).
type Template = templatev1.Template

// TemplateDefinition is what a custom template is built from: a base image
// (oci:DIR[:TAG], docker-archive:FILE, HOST/REPO[:TAG|@DIGEST], template:NAME
// or empty for the provider's base), packages, env and setup commands.
type TemplateDefinition = templatev1.TemplateDefinition

// BuildEvent is one message of a build: exactly one of Progress, Log or Result is set.
type BuildEvent = templatev1.BuildTemplateResponse

// Templates lists, builds and deletes templates.
type Templates struct{ c *Client }

func (c *Client) Templates() *Templates { return &Templates{c} }

// BuildOption tunes a template build.
type BuildOption func(*templatev1.BuildTemplateRequest)

// WithBuildProvider builds on a provider other than the daemon's default.
func WithBuildProvider(name string) BuildOption {
	return func(r *templatev1.BuildTemplateRequest) { r.Provider = name }
}

// WithNoCache builds even when the same definition was built before.
func WithNoCache() BuildOption {
	return func(r *templatev1.BuildTemplateRequest) { r.NoCache = true }
}

// BuildStream builds a template and yields its progress, log lines and, last,
// its result. Stopping the loop early cancels the build.
func (t *Templates) BuildStream(ctx context.Context, def *TemplateDefinition, opts ...BuildOption) iter.Seq2[*BuildEvent, error] {
	return func(yield func(*BuildEvent, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		req := &templatev1.BuildTemplateRequest{Definition: def}
		for _, o := range opts {
			o(req)
		}
		st, err := t.c.Raw.Templates.BuildTemplate(ctx, req)
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			ev, err := st.Recv()
			if err != nil {
				if !isEOF(err) {
					yield(nil, err)
				}
				return
			}
			if !yield(ev, nil) {
				return
			}
		}
	}
}

// Build builds a template and returns its result; onEvent (may be nil) sees
// every progress and log message as it arrives. A build that fails is a
// *TemplateBuildError with the log's last lines.
func (t *Templates) Build(ctx context.Context, def *TemplateDefinition, onEvent func(*BuildEvent), opts ...BuildOption) (*templatev1.BuildResult, error) {
	var tail []string
	for ev, err := range t.BuildStream(ctx, def, opts...) {
		if err != nil {
			if errors.Is(err, ErrTemplateBuildFailed) {
				return nil, &TemplateBuildError{Name: def.GetName(), Log: tail, Err: err}
			}
			return nil, err
		}
		if onEvent != nil {
			onEvent(ev)
		}
		if l := ev.GetLog(); l != nil {
			tail = append(tail, l.GetLine())
			if len(tail) > buildLogTail {
				tail = tail[len(tail)-buildLogTail:]
			}
		}
		if r := ev.GetResult(); r != nil {
			return r, nil
		}
	}
	return nil, errors.New("computesdk: the build stream ended without a result")
}

// buildLogTail is how many of a failed build's last log lines its error keeps.
const buildLogTail = 20

// TemplateBuildError is a template build that failed (reason
// TEMPLATE_BUILD_FAILED: errors.Is(err, ErrTemplateBuildFailed) holds), with
// the last lines of its log.
type TemplateBuildError struct {
	Name string
	Log  []string
	Err  error
}

func (e *TemplateBuildError) Error() string {
	msg := "computesdk: template " + e.Name + " failed to build: " + e.Err.Error()
	if len(e.Log) > 0 {
		msg += "\n" + strings.Join(e.Log, "\n")
	}
	return msg
}

func (e *TemplateBuildError) Unwrap() error { return e.Err }

func (t *Templates) Get(ctx context.Context, name string) (*Template, error) {
	resp, err := t.c.Raw.Templates.GetTemplate(ctx, &templatev1.GetTemplateRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetTemplate(), nil
}

func (t *Templates) List(ctx context.Context) ([]*Template, error) {
	resp, err := t.c.Raw.Templates.ListTemplates(ctx, &templatev1.ListTemplatesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetTemplates(), nil
}

func (t *Templates) Delete(ctx context.Context, name string) error {
	_, err := t.c.Raw.Templates.DeleteTemplate(ctx, &templatev1.DeleteTemplateRequest{Name: name})
	return err
}
