package computesdk

import (
	"context"
	"io/fs"
	"time"

	filesystemv1 "github.com/computesdk/computesdk/clients/go/api/filesystem/v1"
)

// FileInfo describes a path in a sandbox.
type FileInfo struct {
	Name       string
	Path       string
	IsDir      bool
	IsSymlink  bool
	Size       uint64
	Mode       fs.FileMode
	ModTime    time.Time
	LinkTarget string
}

func fileInfoFrom(p *filesystemv1.FileInfo) FileInfo {
	return FileInfo{Name: p.GetName(), Path: p.GetPath(),
		IsDir:     p.GetType() == filesystemv1.FileType_FILE_TYPE_DIRECTORY,
		IsSymlink: p.GetType() == filesystemv1.FileType_FILE_TYPE_SYMLINK,
		Size:      p.GetSize(), Mode: fs.FileMode(p.GetMode()), ModTime: tsTime(p.GetModifyTime()),
		LinkTarget: p.GetLinkTarget()}
}

// ReadFile returns a whole file's contents.
func (s *Sandbox) ReadFile(ctx context.Context, path string) ([]byte, error) {
	return s.ReadFileRange(ctx, path, 0, 0)
}

// ReadFileRange reads length bytes (0 = to the end) from offset.
func (s *Sandbox) ReadFileRange(ctx context.Context, path string, offset, length uint64) ([]byte, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := s.Client().Raw.Files.ReadFile(ctx, &filesystemv1.ReadFileRequest{
		SandboxId: s.ID(), Path: path, Offset: offset, Length: length})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		resp, err := st.Recv()
		if err != nil {
			if isEOF(err) {
				return out, nil
			}
			return nil, err
		}
		out = append(out, resp.GetData()...)
	}
}

// WriteOption configures WriteFile.
type WriteOption func(*filesystemv1.WriteFileHeader)

// WithMode sets the permission bits of a new file (default 0644).
func WithMode(mode fs.FileMode) WriteOption {
	return func(h *filesystemv1.WriteFileHeader) { h.Mode = uint32(mode.Perm()) }
}

// Appending appends instead of replacing.
func Appending() WriteOption { return func(h *filesystemv1.WriteFileHeader) { h.Append = true } }

// NoParents fails instead of creating missing parent directories.
func NoParents() WriteOption { return func(h *filesystemv1.WriteFileHeader) { h.MakeParents = false } }

// WriteFile writes data to path, creating parent directories unless NoParents.
func (s *Sandbox) WriteFile(ctx context.Context, path string, data []byte, opts ...WriteOption) (FileInfo, error) {
	header := &filesystemv1.WriteFileHeader{SandboxId: s.ID(), Path: path, MakeParents: true,
		ExpectFinish: true}
	for _, o := range opts {
		o(header)
	}
	st, err := s.Client().Raw.Files.WriteFile(ctx)
	if err != nil {
		return FileInfo{}, err
	}
	send := func(req *filesystemv1.WriteFileRequest) bool { return st.Send(req) == nil }
	ok := send(&filesystemv1.WriteFileRequest{Request: &filesystemv1.WriteFileRequest_Header{Header: header}})
	for ok && len(data) > 0 {
		n := min(len(data), chunk)
		ok = send(&filesystemv1.WriteFileRequest{Request: &filesystemv1.WriteFileRequest_Data{Data: data[:n]}})
		data = data[n:]
	}
	// Only now is the file put in place: a write cut short (ctx cancelled) changes nothing.
	if ok {
		send(&filesystemv1.WriteFileRequest{Request: &filesystemv1.WriteFileRequest_Finish{
			Finish: &filesystemv1.WriteFileFinish{}}})
	}
	// A failed Send means the server ended the call; CloseAndRecv says why.
	resp, err := st.CloseAndRecv()
	if err != nil {
		return FileInfo{}, err
	}
	return fileInfoFrom(resp.GetInfo()), nil
}

// ListDir lists a directory.
func (s *Sandbox) ListDir(ctx context.Context, path string) ([]FileInfo, error) {
	resp, err := s.Client().Raw.Files.ListDirectory(ctx, &filesystemv1.ListDirectoryRequest{SandboxId: s.ID(), Path: path})
	if err != nil {
		return nil, err
	}
	out := make([]FileInfo, 0, len(resp.GetEntries()))
	for _, e := range resp.GetEntries() {
		out = append(out, fileInfoFrom(e))
	}
	return out, nil
}

// Stat describes one path.
func (s *Sandbox) Stat(ctx context.Context, path string) (FileInfo, error) {
	resp, err := s.Client().Raw.Files.StatPath(ctx, &filesystemv1.StatPathRequest{SandboxId: s.ID(), Path: path})
	if err != nil {
		return FileInfo{}, err
	}
	return fileInfoFrom(resp.GetInfo()), nil
}

// Exists reports whether path exists.
func (s *Sandbox) Exists(ctx context.Context, path string) (bool, error) {
	_, err := s.Stat(ctx, path)
	if err == nil {
		return true, nil
	}
	if isNotFound(err) {
		return false, nil
	}
	return false, err
}

func isNotFound(err error) bool {
	e, ok := err.(*Error)
	return ok && e.Is(ErrNotFound)
}

// Mkdir creates a directory, and its parents when parents is true.
func (s *Sandbox) Mkdir(ctx context.Context, path string, parents bool) (FileInfo, error) {
	resp, err := s.Client().Raw.Files.MakeDirectory(ctx, &filesystemv1.MakeDirectoryRequest{
		SandboxId: s.ID(), Path: path, MakeParents: parents})
	if err != nil {
		return FileInfo{}, err
	}
	return fileInfoFrom(resp.GetInfo()), nil
}

// Remove deletes a path; a non-empty directory needs recursive.
func (s *Sandbox) Remove(ctx context.Context, path string, recursive bool) error {
	_, err := s.Client().Raw.Files.RemovePath(ctx, &filesystemv1.RemovePathRequest{
		SandboxId: s.ID(), Path: path, Recursive: recursive})
	return err
}

// Move renames a path.
func (s *Sandbox) Move(ctx context.Context, source, destination string) (FileInfo, error) {
	resp, err := s.Client().Raw.Files.MovePath(ctx, &filesystemv1.MovePathRequest{
		SandboxId: s.ID(), Source: source, Destination: destination})
	if err != nil {
		return FileInfo{}, err
	}
	return fileInfoFrom(resp.GetInfo()), nil
}
