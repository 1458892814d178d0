package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/relaychat/relaychat/server"
)

// FuzzClientInput writes arbitrary bytes at a server as a client would and
// checks that every line it answers is one JSON object, that the connection
// still answers a ping unless the server closed it on purpose, and that the
// server keeps serving.
func FuzzClientInput(f *testing.F) {
	srv, err := server.New(server.Options{
		ID: "f1", Listen: "127.0.0.1:0", PeerListen: "127.0.0.1:0",
		Router: newMemRouter(), MaxLine: 4096, Logger: testLogger(),
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		f.Fatal(err)
	}
	defer func() { _ = srv.Shutdown(context.Background()) }()
	for _, seed := range []string{
		`{"cmd":"login","name":"a"}` + "\n" + `{"cmd":"chat","recv":"a","content":"hi","id":1}`,
		`{"cmd":"chat","send":"x","recv":"a","content":"hi"}`,
		`{"cmd":"logout"}` + "\r\n\r\n" + `{"cmd":"ping","id":"p"}`,
		"\x00\xff{\"cmd\":",
		strings.Repeat("[", 5000),
		`{"cmd":"login","name":"` + strings.Repeat("n", 70) + `"}`,
		strings.Repeat("x", 5000),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		conn, err := net.DialTimeout("tcp", srv.ClientAddr(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		msg := append(append([]byte(nil), in...), []byte("\n{\"cmd\":\"ping\",\"id\":\"end\"}\n")...)
		if _, err := conn.Write(msg); err != nil {
			return // the server may close first (line too long); fine
		}
		br := bufio.NewReader(conn)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				if line != "" {
					t.Fatalf("unterminated line %q", line)
				}
				// Closed by the server: only for an over-long line.
				if !hasLongLine(in, 4096) {
					t.Fatalf("connection closed (%v) although no line was over the cap", err)
				}
				return
			}
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil || m == nil {
				t.Fatalf("reply is not one JSON object: %q", line)
			}
			if m["cmd"] == "pong" && m["id"] == "end" {
				return
			}
		}
	})
}

// hasLongLine reports whether in holds a line (between newlines, without a
// trailing \r) longer than max; the fuzzer's own terminator ends the last.
func hasLongLine(in []byte, max int) bool {
	for _, l := range strings.Split(string(in), "\n") {
		if len(strings.TrimSuffix(l, "\r")) > max {
			return true
		}
	}
	return false
}
