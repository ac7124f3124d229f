package main

import (
	"errors"
	"testing"
)

func withSegmentCap(t *testing.T, n int64) {
	old := segmentCap
	segmentCap = n
	t.Cleanup(func() { segmentCap = old })
}

func read(t *testing.T, s *stream, off int64, max int) string {
	t.Helper()
	b, err := s.readAt(off, max)
	if err != nil {
		t.Fatalf("readAt(%d): %v", off, err)
	}
	return string(b)
}

func TestStreamAppendsAcrossSegmentsAndDropsTheOldest(t *testing.T) {
	withSegmentCap(t, 4)
	s, err := newStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.release()
	// A segment takes appends until it holds segmentCap bytes (the last may overshoot).
	for _, b := range []string{"abc", "de", "fgh", "ij"} {
		if err := s.append([]byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	if s.total != 10 || len(s.segs) != 2 || s.segs[1].start != 5 || s.earliest() != 0 {
		t.Fatalf("total %d, %d segments, second at %d", s.total, len(s.segs), s.segs[1].start)
	}
	if got := read(t, s, 0, 100); got != "abcde" { // a read stays within one segment
		t.Fatalf("readAt(0) = %q", got)
	}
	if got := read(t, s, 3, 100); got != "de" {
		t.Fatalf("readAt(3) = %q", got)
	}
	if got := read(t, s, 5, 3); got != "fgh" {
		t.Fatalf("readAt(5, 3) = %q", got)
	}
	// A third segment drops the first.
	if err := s.append([]byte("k")); err != nil {
		t.Fatal(err)
	}
	if s.total != 11 || len(s.segs) != 2 || s.earliest() != 5 {
		t.Fatalf("total %d, %d segments, earliest %d", s.total, len(s.segs), s.earliest())
	}
	if got := read(t, s, 7, 100); got != "hij" {
		t.Fatalf("readAt(7) = %q", got)
	}
	if got := read(t, s, 10, 100); got != "k" {
		t.Fatalf("readAt(10) = %q", got)
	}
	for _, off := range []int64{0, 4, -1, 11} {
		_, err := s.readAt(off, 100)
		var ae *agentError
		if !errors.As(err, &ae) || ae.code != codeOutputTruncated {
			t.Fatalf("readAt(%d) of a dropped or absent offset: %v, want OUTPUT_TRUNCATED", off, err)
		}
	}
}

func TestFilePoolHandsOutFilesInTheStateDir(t *testing.T) {
	f, err := files.get()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("x"); err != nil {
		t.Fatal(err)
	}
	files.discard(f)
}
