package wsproto_test

import (
	"errors"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/internal/wsproto"
)

// wsConn is the per-connection state a gnet handler keeps in Conn.Context.
type wsConn struct {
	upgraded bool
	rd       wsproto.Reader
	out      []byte // reused output buffer
}

type wsHandler struct {
	gnet.BuiltinEventEngine
	maxLine int
	page    []byte // what GET / returns
}

func (h *wsHandler) OnOpen(c gnet.Conn) ([]byte, gnet.Action) {
	c.SetContext(&wsConn{rd: wsproto.Reader{Max: h.maxLine}})
	return nil, gnet.None
}

// OnTraffic feeds everything received to the handshake parser, then to the
// frame reader, discards exactly what they consumed, and writes the
// answers in one Write.
func (h *wsHandler) OnTraffic(c gnet.Conn) gnet.Action {
	st := c.Context().(*wsConn)
	buf, _ := c.Peek(-1) // valid until the Discard below
	consumed := 0
	out := st.out[:0]
	defer func() { st.out = out[:0] }()

	if !st.upgraded {
		hs := wsproto.ParseHandshake(buf, 0)
		switch hs.Kind {
		case wsproto.NeedMore:
			return gnet.None // nothing consumed; gnet keeps the bytes
		case wsproto.Plain:
			r := wsproto.Response{Status: 404, Body: []byte("not found\n"), HeadOnly: hs.Method == "HEAD"}
			if hs.Path == "/" {
				r = wsproto.Response{ContentType: "text/html; charset=utf-8", Body: h.page, HeadOnly: hs.Method == "HEAD"}
			}
			_, _ = c.Write(wsproto.AppendResponse(out, r))
			return gnet.Close
		case wsproto.Reject:
			_, _ = c.Write(hs.Response)
			return gnet.Close
		}
		out = append(out, hs.Response...) // the 101 goes out before any frame
		consumed, st.upgraded = hs.Consumed, true
	}

	act := gnet.None
	for {
		m, n, err := st.rd.Next(buf[consumed:])
		consumed += n
		if err != nil {
			if errors.Is(err, wsproto.ErrTooBig) {
				out = wsproto.AppendText(out, []byte(`{"cmd":"error","error":"line too long"}`))
			}
			out = wsproto.AppendClose(out, wsproto.CloseCode(err), "")
			act = gnet.Close
			break
		}
		if m.Kind == wsproto.None {
			break
		}
		switch m.Kind {
		case wsproto.Text:
			// m.Payload holds one request or several separated by "\n";
			// it is unmasked in place in buf, so serve it (or copy what
			// must wait) before the Discard below.
			out = wsproto.AppendText(out, m.Payload) // echo, for the example
		case wsproto.Binary:
			out = wsproto.AppendText(out, []byte(`{"cmd":"error","error":"binary frames are not supported"}`))
		case wsproto.Ping:
			out = wsproto.AppendPong(out, m.Payload)
		case wsproto.Close:
			out = wsproto.AppendClose(out, m.Code, "")
			act = gnet.Close
		}
		if act == gnet.Close {
			break
		}
	}
	if consumed > 0 { // gnet's Discard(n <= 0) would drop the whole buffer
		_, _ = c.Discard(consumed)
	}
	if len(out) > 0 {
		_, _ = c.Write(out) // Write copies what the socket does not take
	}
	return act
}

// Example_gnet shows the package in a gnet handler; see wsHandler.OnTraffic.
// Replies the server builds as lines (codec.Append*, each ending in "\n")
// become frames with FrameLines, or are framed in place with
// BeginText/EndText.
func Example_gnet() {
	h := &wsHandler{maxLine: 65536, page: []byte("<!doctype html><title>chat</title>")}
	_ = gnet.Run(h, "tcp://127.0.0.1:0") // blocks; not run here
}
