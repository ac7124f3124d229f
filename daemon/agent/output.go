package main

// The output store: each process's stdout and stderr are kept in size-capped
// segment files (on a tmpfs inside the sandbox, charged to its memory), so that
// a reader can re-read them from any byte offset still retained.

import (
	"os"
	"time"
)

type segment struct {
	start int64
	size  int64
	f     *os.File
}

// stream keeps the most recent output of one pipe in at most two segment files.
type stream struct {
	segs   []*segment
	total  int64
	closed bool
}

func newStream() (*stream, error) {
	f, err := files.get()
	if err != nil {
		return nil, err
	}
	return &stream{segs: []*segment{{f: f}}}, nil
}

func (s *stream) append(b []byte) error {
	last := s.segs[len(s.segs)-1]
	if last.size >= segmentCap {
		f, err := files.get()
		if err != nil {
			return err
		}
		last = &segment{start: s.total, f: f}
		s.segs = append(s.segs, last)
		if len(s.segs) > 2 {
			old := s.segs[0]
			files.discard(old.f)
			s.segs = s.segs[1:]
		}
	}
	if _, err := last.f.WriteAt(b, last.size); err != nil {
		return err
	}
	last.size += int64(len(b))
	s.total += int64(len(b))
	return nil
}

func (s *stream) earliest() int64 { return s.segs[0].start }

// readAt returns up to max bytes at offset off, which must be retained.
func (s *stream) readAt(off int64, max int) ([]byte, error) {
	for _, seg := range s.segs {
		if off >= seg.start && off < seg.start+seg.size {
			n := seg.start + seg.size - off
			if n > int64(max) {
				n = int64(max)
			}
			buf := make([]byte, n)
			_, err := seg.f.ReadAt(buf, off-seg.start)
			return buf, err
		}
	}
	return nil, fail(codeOutputTruncated, "offset %d is no longer retained", off)
}

func (s *stream) release() {
	for _, seg := range s.segs {
		files.discard(seg.f)
	}
}

// releaseNow frees the stream's files before it returns, for a full store.
func (s *stream) releaseNow() {
	for _, seg := range s.segs {
		seg.f.Close()
		os.Remove(seg.f.Name())
	}
}

// filePool hands out output files created ahead of time, so that creating one
// stays off the exec path; removal happens off it too.
type filePool struct {
	ready chan *os.File
	gone  chan *os.File
}

var files = &filePool{ready: make(chan *os.File, 16), gone: make(chan *os.File, 256)}

func (fp *filePool) run() {
	for {
		select {
		case f := <-fp.gone:
			f.Close()
			os.Remove(f.Name())
		default:
			f, err := os.CreateTemp(stateDir, "out-")
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			select {
			case fp.ready <- f:
			case g := <-fp.gone: // the pool is full: clean up while waiting
				g.Close()
				os.Remove(g.Name())
				fp.ready <- f
			}
		}
	}
}

func (fp *filePool) get() (*os.File, error) {
	select {
	case f := <-fp.ready:
		return f, nil
	default:
		return os.CreateTemp(stateDir, "out-")
	}
}

func (fp *filePool) discard(f *os.File) {
	select {
	case fp.gone <- f:
	default:
		f.Close()
		os.Remove(f.Name())
	}
}
