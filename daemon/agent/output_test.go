package main

import (
	"errors"
	"os"
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

func TestAFullStoreDropsTheOldestFinishedProcessFirst(t *testing.T) {
	mk := func(id string, exited bool) *process {
		out, err := newStream()
		if err != nil {
			t.Fatal(err)
		}
		errs, err := newStream()
		if err != nil {
			t.Fatal(err)
		}
		out.closed, errs.closed = true, true
		return &process{id: id, out: out, err: errs, exited: exited}
	}
	running, old, newer := mk("running", false), mk("old", true), mk("newer", true)
	// The table's contents are swapped under its lock, not the table: the reaper
	// of the other tests' processes reads it meanwhile.
	procs.mu.Lock()
	savedID, savedPid, savedOrder := procs.byID, procs.byPid, procs.order
	procs.byID, procs.byPid, procs.order = map[string]*process{}, map[int]*process{}, nil
	for _, p := range []*process{running, old, newer} {
		procs.byID[p.id] = p
		procs.order = append(procs.order, p)
	}
	procs.mu.Unlock()
	t.Cleanup(func() {
		procs.mu.Lock()
		procs.byID, procs.byPid, procs.order = savedID, savedPid, savedOrder
		procs.mu.Unlock()
	})
	has := func(id string) bool {
		procs.mu.Lock()
		defer procs.mu.Unlock()
		_, ok := procs.byID[id]
		return ok
	}
	name := old.out.segs[0].f.Name()
	if !dropOldestExited() {
		t.Fatal("nothing dropped")
	}
	procs.mu.Lock()
	order := append([]*process(nil), procs.order...)
	procs.mu.Unlock()
	if has("old") || len(order) != 2 || order[1] != newer {
		t.Fatalf("the oldest finished process was not the one dropped: %v", order)
	}
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("its output file is still there: %v", err)
	}
	if !dropOldestExited() || dropOldestExited() {
		t.Fatal("a running process's output must never be dropped")
	}
	if !has("running") {
		t.Fatal("the running process went")
	}
}
