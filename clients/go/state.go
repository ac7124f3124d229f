package computesdk

import (
	"bytes"
	"context"
	"io"

	snapshotv1 "github.com/computesdk/computesdk/clients/go/api/snapshot/v1"
)

// Snapshot is one recorded point of a sandbox; copy-on-write, so its cost does
// not grow with the sandbox's files.
type Snapshot = snapshotv1.Snapshot

// SavedState is a sandbox's files, template, env and resources kept under an
// id that outlives it (see WithRestoreFrom).
type SavedState = snapshotv1.State

// CreateSnapshot records the sandbox's files as they are now and returns the
// snapshot's id, for RestoreSnapshot and DeleteSnapshot.
func (s *Sandbox) CreateSnapshot(ctx context.Context, name, description string) (string, error) {
	resp, err := s.Client().Raw.Snapshots.CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{
		SandboxId: s.ID(), Name: name, Description: description})
	if err != nil {
		return "", err
	}
	return resp.GetSnapshot().GetId(), nil
}

// ListSnapshots lists the sandbox's snapshots, newest first.
func (s *Sandbox) ListSnapshots(ctx context.Context) ([]*Snapshot, error) {
	resp, err := s.Client().Raw.Snapshots.ListSnapshots(ctx, &snapshotv1.ListSnapshotsRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return resp.GetSnapshots(), nil
}

// RestoreSnapshot returns the files to a snapshot; every process stops, the id stays.
func (s *Sandbox) RestoreSnapshot(ctx context.Context, snapshotID string) error {
	resp, err := s.Client().Raw.Snapshots.RestoreSnapshot(ctx, &snapshotv1.RestoreSnapshotRequest{
		SandboxId: s.ID(), SnapshotId: snapshotID})
	if err != nil {
		return err
	}
	s.setInfo(resp.GetSandbox())
	return nil
}

// DeleteSnapshot frees a snapshot.
func (s *Sandbox) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	_, err := s.Client().Raw.Snapshots.DeleteSnapshot(ctx, &snapshotv1.DeleteSnapshotRequest{
		SandboxId: s.ID(), SnapshotId: snapshotID})
	return err
}

// Snapshots is ListSnapshots.
func (s *Sandbox) Snapshots(ctx context.Context) ([]*Snapshot, error) { return s.ListSnapshots(ctx) }

// SaveState keeps the sandbox's files, template, env and resources under an
// id that outlives it ("" name is fine) and returns the id, for
// WithRestoreFrom; Client.States lists them.
func (s *Sandbox) SaveState(ctx context.Context, name string) (string, error) {
	resp, err := s.Client().Raw.Snapshots.SaveState(ctx, &snapshotv1.SaveStateRequest{SandboxId: s.ID(), Name: name})
	if err != nil {
		return "", err
	}
	return resp.GetState().GetId(), nil
}

// ExportState is the sandbox as it is now, as a portable archive for
// WithImportState (Client.ExportState streams one to a writer instead).
func (s *Sandbox) ExportState(ctx context.Context) ([]byte, error) {
	var buf bytes.Buffer
	if err := s.Client().ExportState(ctx, "", s.ID(), &buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// States lists saved states.
func (c *Client) States(ctx context.Context) ([]*SavedState, error) {
	resp, err := c.Raw.Snapshots.ListStates(ctx, &snapshotv1.ListStatesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetStates(), nil
}

// DeleteState frees a saved state.
func (c *Client) DeleteState(ctx context.Context, stateID string) error {
	_, err := c.Raw.Snapshots.DeleteState(ctx, &snapshotv1.DeleteStateRequest{StateId: stateID})
	return err
}

// WithRestoreFrom starts the sandbox from a saved state (SaveState's id)
// instead of its template.
func WithRestoreFrom(stateID string) CreateOption {
	return func(s *createSpec) { s.req.RestoreFrom = stateID }
}

// WithImportState makes the sandbox from an archive (ExportState's bytes):
// its files, template, env and resources come from the archive; the
// provider and WithMetadata from the create.
func WithImportState(archive []byte) CreateOption {
	return func(s *createSpec) { s.importState = archive }
}

// ExportState writes a saved state (stateID) or a sandbox as it is now
// (sandboxID, when stateID is empty) to w as a portable archive.
func (c *Client) ExportState(ctx context.Context, stateID, sandboxID string, w io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &snapshotv1.ExportStateRequest{Source: &snapshotv1.ExportStateRequest_SandboxId{SandboxId: sandboxID}}
	if stateID != "" {
		req.Source = &snapshotv1.ExportStateRequest_StateId{StateId: stateID}
	}
	st, err := c.Raw.Snapshots.ExportState(ctx, req)
	if err != nil {
		return err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if isEOF(err) {
				return nil
			}
			return err
		}
		if _, err := w.Write(resp.GetData()); err != nil {
			return err
		}
	}
}

// ImportState creates a sandbox from an archive ExportState wrote.
func (c *Client) ImportState(ctx context.Context, r io.Reader, provider string, metadata map[string]string) (*Sandbox, error) {
	st, err := c.Raw.Snapshots.ImportState(ctx)
	if err != nil {
		return nil, err
	}
	send := func(req *snapshotv1.ImportStateRequest) bool { return st.Send(req) == nil }
	ok := send(&snapshotv1.ImportStateRequest{Request: &snapshotv1.ImportStateRequest_Header{
		Header: &snapshotv1.ImportStateHeader{Provider: provider, Metadata: metadata}}})
	buf := make([]byte, chunk)
	for ok {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			ok = send(&snapshotv1.ImportStateRequest{Request: &snapshotv1.ImportStateRequest_Data{Data: append([]byte(nil), buf[:n]...)}})
		}
		if rerr != nil {
			if rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
				return nil, rerr
			}
			break
		}
	}
	// A failed Send means the server ended the call; CloseAndRecv says why.
	resp, err := st.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return c.sandbox(resp.GetSandbox(), nil), nil
}
