package computesdk

import (
	"context"

	sandboxv1 "github.com/computesdk/computesdk/clients/go/api/sandbox/v1"
	volumev1 "github.com/computesdk/computesdk/clients/go/api/volume/v1"
)

// Volume is a volume to mount at create, in the spec's shape:
//
//	computesdk.WithVolumes([]computesdk.Volume{
//		{Name: "workspace", Path: "/workspace", Size: "10GB", Persistent: true},
//		{Name: "cache", Path: "/cache", Size: "5GB"},
//	})
//
// A volume that does not exist yet is made on first use, Size big ("10GB" is
// 10^9 bytes, "10GiB" 2^30, "512MB", a bare number is MB; the daemon reads
// it), kept after the sandbox when Persistent, removed with it otherwise.
// MountExisting mounts one made before and fails (VOLUME_NOT_FOUND) when
// there is none. An existing volume is mounted as it is, whatever Size says.
type Volume struct {
	Name          string `json:"name"`
	Path          string `json:"path"`
	Size          string `json:"size,omitempty"`
	SizeMB        uint64 `json:"sizeMB,omitempty"` // the size as a number, when Size is empty
	Persistent    bool   `json:"persistent,omitempty"`
	MountExisting bool   `json:"mountExisting,omitempty"`
	ReadOnly      bool   `json:"readOnly,omitempty"`
}

func (v Volume) proto() *sandboxv1.VolumeMount {
	return &sandboxv1.VolumeMount{Name: v.Name, MountPath: v.Path, ReadOnly: v.ReadOnly, SizeMb: v.SizeMB,
		Size: v.Size, Persistent: v.Persistent, MustExist: v.MountExisting}
}

// WithVolumes mounts volumes (see Volume).
func WithVolumes(volumes []Volume) CreateOption {
	return func(s *createSpec) {
		for _, v := range volumes {
			s.volumes = append(s.volumes, v)
			s.req.Volumes = append(s.req.Volumes, v.proto())
		}
	}
}

// WithVolume mounts a named volume at path; sizeMB > 0 makes an ephemeral one
// when it does not exist yet.
func WithVolume(name, path string, readOnly bool, sizeMB uint64) CreateOption {
	return WithVolumes([]Volume{{Name: name, Path: path, ReadOnly: readOnly, SizeMB: sizeMB}})
}

// VolumeInfo is a volume as the daemon keeps it (Volumes().Get).
type VolumeInfo = volumev1.Volume

// Volumes manages named volumes.
type Volumes struct{ c *Client }

func (c *Client) Volumes() *Volumes { return &Volumes{c} }

func (v *Volumes) Create(ctx context.Context, name string, sizeMB uint64, persistent bool) (*VolumeInfo, error) {
	resp, err := v.c.Raw.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{Name: name, SizeMb: sizeMB, Persistent: persistent})
	if err != nil {
		return nil, err
	}
	return resp.GetVolume(), nil
}

func (v *Volumes) Get(ctx context.Context, name string) (*VolumeInfo, error) {
	resp, err := v.c.Raw.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{Name: name})
	if err != nil {
		return nil, err
	}
	return resp.GetVolume(), nil
}

func (v *Volumes) List(ctx context.Context) ([]*VolumeInfo, error) {
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
