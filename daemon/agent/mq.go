package main

// The in-sandbox client of the daemon's message channels, run as
//
//	/.computesdk/agent mq send CHANNEL RECIPIENT|- MESSAGE
//	/.computesdk/agent mq recv CHANNEL [COUNT]
//
// It speaks JSON lines over a socket the daemon binds for each channel member in
// a per-sandbox directory that is bind-mounted read-only: code inside can
// connect but cannot replace the socket, and the daemon knows which sandbox owns
// it, so the sender name cannot be forged from inside.
//
// This is not the control wire (proto/computesdk/agent/v1, wire.go): the channel
// protocol, shared with daemon/computesdkd/messaging.py, stays JSON lines.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
)

const mqSocket = "/.computesdk/ctl/mq.sock"

func mqMain(args []string) int {
	usage := "usage: mq send CHANNEL RECIPIENT|- MESSAGE | mq recv CHANNEL [COUNT]"
	if len(args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	req := map[string]any{"op": args[0], "channel": args[1]}
	want := -1 // replies to read; -1 means until the daemon ends the stream
	switch {
	case args[0] == "send" && len(args) == 4:
		to := args[2]
		if to == "-" {
			to = ""
		}
		req["to"], req["payload"] = to, args[3]
		want = 1
	case args[0] == "recv" && len(args) <= 3:
		if len(args) == 3 {
			n, err := strconv.Atoi(args[2])
			if err != nil || n < 1 {
				fmt.Fprintln(os.Stderr, usage)
				return 2
			}
			want = n
		}
	default:
		fmt.Fprintln(os.Stderr, usage)
		return 2
	}
	conn, err := net.Dial("unix", mqSocket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mq: this sandbox is on no channel:", err)
		return 1
	}
	defer conn.Close()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		fmt.Fprintln(os.Stderr, "mq:", err)
		return 1
	}
	lines := bufio.NewScanner(conn)
	lines.Buffer(make([]byte, 64*1024), 4<<20)
	for got := 0; want < 0 || got < want; got++ {
		if !lines.Scan() {
			break
		}
		var reply map[string]any
		if err := json.Unmarshal(lines.Bytes(), &reply); err != nil {
			fmt.Fprintln(os.Stderr, "mq: bad reply:", err)
			return 1
		}
		if msg, ok := reply["error"]; ok {
			fmt.Fprintln(os.Stderr, "mq:", msg)
			return 1
		}
		if args[0] == "send" {
			fmt.Println(reply["sender_sequence"])
			continue
		}
		fmt.Printf("%v\t%v\n", reply["sender"], reply["payload"])
		// Acknowledged only once printed: a recv that dies first gets it again.
		if err := json.NewEncoder(conn).Encode(map[string]any{"ack": reply["sequence"]}); err != nil {
			fmt.Fprintln(os.Stderr, "mq:", err)
			return 1
		}
	}
	return 0
}
