package computesdk

import (
	"context"
	"io"

	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
	snapshotv1 "github.com/computesdk/computesdk/clients/go/api/snapshot/v1"
	volumev1 "github.com/computesdk/computesdk/clients/go/api/volume/v1"
)

// Snapshot is one recorded point of a sandbox; copy-on-write, so its cost does
// not grow with the sandbox's files.
type Snapshot = snapshotv1.Snapshot

// SavedState is a sandbox's files, template, env and resources kept under an
// id that outlives it (see WithRestoreFrom).
type SavedState = snapshotv1.State

// Volume is a named, size-limited filesystem that sandboxes mount.
type Volume = volumev1.Volume

// CreateSnapshot records the sandbox's files as they are now.
func (s *Sandbox) CreateSnapshot(ctx context.Context, name, description string) (*Snapshot, error) {
	resp, err := s.client.Raw.Snapshots.CreateSnapshot(ctx, &snapshotv1.CreateSnapshotRequest{
		SandboxId: s.ID(), Name: name, Description: description})
	if err != nil {
		return nil, err
	}
	return resp.GetSnapshot(), nil
}

// Snapshots lists the sandbox's snapshots, newest first.
func (s *Sandbox) Snapshots(ctx context.Context) ([]*Snapshot, error) {
	resp, err := s.client.Raw.Snapshots.ListSnapshots(ctx, &snapshotv1.ListSnapshotsRequest{SandboxId: s.ID()})
	if err != nil {
		return nil, err
	}
	return resp.GetSnapshots(), nil
}

// RestoreSnapshot returns the files to a snapshot; every process stops, the id stays.
func (s *Sandbox) RestoreSnapshot(ctx context.Context, snapshotID string) error {
	resp, err := s.client.Raw.Snapshots.RestoreSnapshot(ctx, &snapshotv1.RestoreSnapshotRequest{
		SandboxId: s.ID(), SnapshotId: snapshotID})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.info = resp.GetSandbox()
	s.mu.Unlock()
	return nil
}

// DeleteSnapshot frees a snapshot.
func (s *Sandbox) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	_, err := s.client.Raw.Snapshots.DeleteSnapshot(ctx, &snapshotv1.DeleteSnapshotRequest{
		SandboxId: s.ID(), SnapshotId: snapshotID})
	return err
}

// SaveState keeps the sandbox under an id that outlives it.
func (s *Sandbox) SaveState(ctx context.Context, name string) (*SavedState, error) {
	resp, err := s.client.Raw.Snapshots.SaveState(ctx, &snapshotv1.SaveStateRequest{SandboxId: s.ID(), Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetState(), nil
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

// WithRestoreFrom starts the sandbox from a saved state instead of its template.
func WithRestoreFrom(stateID string) CreateOption {
	return func(r *sandboxv1.CreateSandboxRequest) { r.RestoreFrom = stateID }
}

// WithVolume mounts a named volume at path; sizeMB > 0 makes an ephemeral one
// when it does not exist yet.
func WithVolume(name, path string, readOnly bool, sizeMB uint64) CreateOption {
	return func(r *sandboxv1.CreateSandboxRequest) {
		r.Volumes = append(r.Volumes, &sandboxv1.VolumeMount{Name: name, MountPath: path, ReadOnly: readOnly, SizeMb: sizeMB})
	}
}

// RestartOption changes what a restart starts with.
type RestartOption func(*sandboxv1.RestartSandboxRequest)

// RestartWithTemplate starts from another template's files.
func RestartWithTemplate(name string) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Template = name }
}

// RestartWithEnv replaces the environment.
func RestartWithEnv(env map[string]string) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Env = env }
}

// RestartWithResources replaces the resources.
func RestartWithResources(res Resources) RestartOption {
	return func(r *sandboxv1.RestartSandboxRequest) { r.Resources = res.proto() }
}

// Restart stops every process and starts the sandbox again, keeping its id.
func (s *Sandbox) Restart(ctx context.Context, opts ...RestartOption) error {
	req := &sandboxv1.RestartSandboxRequest{SandboxId: s.ID()}
	for _, o := range opts {
		o(req)
	}
	resp, err := s.client.Raw.Sandboxes.RestartSandbox(ctx, req)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.info = resp.GetSandbox()
	s.mu.Unlock()
	return nil
}

// Volumes manages named volumes.
type Volumes struct{ c *Client }

func (c *Client) Volumes() *Volumes { return &Volumes{c} }

func (v *Volumes) Create(ctx context.Context, name string, sizeMB uint64, persistent bool) (*Volume, error) {
	resp, err := v.c.Raw.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{Name: name, SizeMb: sizeMB, Persistent: persistent})
	if err != nil {
		return nil, err
	}
	return resp.GetVolume(), nil
}

func (v *Volumes) Get(ctx context.Context, name string) (*Volume, error) {
	resp, err := v.c.Raw.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetVolume(), nil
}

func (v *Volumes) List(ctx context.Context) ([]*Volume, error) {
	resp, err := v.c.Raw.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetVolumes(), nil
}

func (v *Volumes) Delete(ctx context.Context, name string) error {
	_, err := v.c.Raw.Volumes.DeleteVolume(ctx, &volumev1.DeleteVolumeRequest{Name: name})
	return err
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
	return &Sandbox{client: c, info: resp.GetSandbox()}, nil
}
