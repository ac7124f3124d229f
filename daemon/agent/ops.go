package main

// The operations of a connection: one request each (ping, start, attach, signal,
// stdin, list, killall), and following a process's output to its exit.

import (
	"net"
	"os"
	"sort"
	"syscall"

	"computesdk/agent/agentpb"
	"google.golang.org/protobuf/proto"
)

const readChunk = 1 << 20

func serve(nc net.Conn) {
	defer nc.Close()
	c := &conn{c: nc}
	kind, body, err := readFrame(nc)
	if err != nil || kind != frameRequest {
		return
	}
	req, err := decodeRequest(body)
	if err != nil {
		c.writeErr(err)
		return
	}
	if err := handle(c, req); err != nil {
		c.writeErr(err)
	}
}

func handle(c *conn, req *agentpb.Request) error {
	switch op := req.Op.(type) {
	case *agentpb.Request_Ping:
		return c.writeMsg(frameReply, &agentpb.PingReply{Pid: int32(os.Getpid())})
	case *agentpb.Request_Start:
		return opStart(c, op.Start)
	case *agentpb.Request_Attach:
		return opAttach(c, op.Attach)
	case *agentpb.Request_Signal:
		return opSignal(c, op.Signal)
	case *agentpb.Request_Stdin:
		return opStdin(c, op.Stdin)
	case *agentpb.Request_List:
		return opList(c)
	case *agentpb.Request_Killall:
		return opKillAll(c, op.Killall)
	}
	return fail(codeInvalidArgument, "unknown operation")
}

func opStart(c *conn, req *agentpb.StartRequest) error {
	p, err := startProcess(req)
	if err != nil {
		return err
	}
	if err := c.writeMsg(frameReply, p.info()); err != nil {
		return nil
	}
	if req.Attach {
		follow(c, p, 0, 0, req.NoOutput, req.KillOnClose)
	}
	return nil
}

func opAttach(c *conn, req *agentpb.AttachRequest) error {
	p, err := procs.get(req.Id)
	if err != nil {
		return err
	}
	if err := c.writeMsg(frameReply, p.info()); err != nil {
		return nil
	}
	follow(c, p, req.StdoutOffset, req.StderrOffset, req.NoOutput, req.KillOnClose)
	return nil
}

func opSignal(c *conn, req *agentpb.SignalRequest) error {
	p, err := procs.get(req.Id)
	if err != nil {
		return err
	}
	if err := signalProcess(p, int(req.Signal)); err != nil {
		return err
	}
	return c.writeMsg(frameReply, &agentpb.Ack{})
}

// opStdin writes the one stdin frame that follows the request.
func opStdin(c *conn, req *agentpb.StdinRequest) error {
	p, err := procs.get(req.Id)
	if err != nil {
		return err
	}
	kind, data, err := readFrame(c.c)
	if err != nil || kind != frameStdin {
		return fail(codeInvalidArgument, "expected a stdin frame")
	}
	if err := writeStdin(p, data, req.Close); err != nil {
		return err
	}
	return c.writeMsg(frameReply, &agentpb.Ack{})
}

func opList(c *conn) error {
	list := procs.all()
	infos := make([]*agentpb.ProcessInfo, 0, len(list))
	for _, p := range list {
		infos = append(infos, p.info())
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].StartUnixMs < infos[j].StartUnixMs })
	return c.writeMsg(frameReply, &agentpb.ListReply{Processes: infos})
}

func opKillAll(c *conn, req *agentpb.KillAllRequest) error {
	for _, p := range procs.all() {
		signalProcess(p, int(req.Signal))
	}
	return c.writeMsg(frameReply, &agentpb.Ack{})
}

// follow streams output from the given offsets, then the exit status.
func follow(c *conn, p *process, outOff, errOff int64, noOutput, killOnClose bool) {
	var pn *pin
	if killOnClose { // a foreground exec: its reader paces the process
		pn = &pin{outOff, errOff}
		p.mu.Lock()
		p.pins[pn] = struct{}{}
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			delete(p.pins, pn)
			p.room.Broadcast()
			p.mu.Unlock()
		}()
	}
	gone := make(chan struct{})
	go func() { // input from the daemon; its end means the client went away
		defer close(gone)
		for {
			kind, data, err := readFrame(c.c)
			if err != nil {
				return
			}
			switch kind {
			case frameStdin:
				writeStdin(p, data, false)
			case frameClose:
				writeStdin(p, nil, true)
			case frameSignal:
				var s agentpb.SignalFrame
				if proto.Unmarshal(data, &s) == nil {
					signalProcess(p, int(s.Signal))
				}
			}
		}
	}()
	for {
		p.mu.Lock()
		if noOutput {
			outOff, errOff = p.out.total, p.err.total
		}
		var kind byte
		var chunk []byte
		var err error
		switch {
		case outOff < p.out.total:
			if outOff < p.out.earliest() {
				err = fail(codeOutputTruncated, "stdout before offset %d is no longer retained", p.out.earliest())
			} else {
				kind = frameStdout
				chunk, err = p.out.readAt(outOff, readChunk)
				outOff += int64(len(chunk))
			}
		case errOff < p.err.total:
			if errOff < p.err.earliest() {
				err = fail(codeOutputTruncated, "stderr before offset %d is no longer retained", p.err.earliest())
			} else {
				kind = frameStderr
				chunk, err = p.err.readAt(errOff, readChunk)
				errOff += int64(len(chunk))
			}
		}
		if pn != nil {
			pn.out, pn.err = outOff, errOff
			p.room.Broadcast()
		}
		finished := p.done()
		status := p.status
		wait := p.changed
		p.mu.Unlock()
		if err != nil {
			c.writeErr(err)
			return
		}
		if chunk != nil {
			if c.write(kind, chunk) != nil {
				break
			}
			continue
		}
		if finished {
			c.writeMsg(frameExit, status.proto())
			return
		}
		select {
		case <-wait:
		case <-gone:
			if killOnClose {
				syscall.Kill(-p.pid, syscall.SIGKILL)
			}
			return
		}
	}
	if killOnClose {
		syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}
