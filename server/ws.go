package server

import (
	"bytes"
	"errors"

	"github.com/panjf2000/gnet/v2"

	"github.com/relaychat/relaychat/codec"
	"github.com/relaychat/relaychat/internal/batch"
	"github.com/relaychat/relaychat/internal/wsproto"
	"github.com/relaychat/relaychat/web"
)

// The WebSocket transport. A WebSocket client is an ordinary session on
// the same loops: only its input (frames instead of lines) and its output
// framing (Endpoint.Frame: one text frame per reply or delivery line)
// differ, so every limit, error and delivery rule is the TCP one.

// wsState is a WebSocket session's transport state (its loop only).
type wsState struct {
	upgraded bool
	rd       wsproto.Reader
	// lines holds request bytes taken out of frames and not served yet
	// (the session went busy part-way through a frame's requests).
	lines []byte
	ctrl  []byte // pongs and close frames to write after the replies
}

func newWSState(maxLine int) *wsState {
	return &wsState{rd: wsproto.Reader{Max: maxLine}}
}

// wsRefusal is the HTTP answer to a WebSocket connection refused before
// its upgrade.
func wsRefusal(err codec.ProtoError) []byte {
	return wsproto.AppendResponse(nil, wsproto.Response{Status: 503, Body: []byte(string(err) + "\n")})
}

// serveWS serves a WebSocket session's input: the upgrade (or the chat
// page on a plain GET), then frames: text frames' requests are served like
// TCP lines, pings answered, binary frames refused with an error, a close
// echoed.
func (s *Server) serveWS(l *batch.Loop, ss *session) gnet.Action {
	c, w := ss.C, ss.ws
	buf, _ := c.Peek(-1)
	consumed := 0
	if !w.upgraded {
		hs := wsproto.ParseHandshake(buf, 0)
		switch hs.Kind {
		case wsproto.NeedMore:
			return gnet.None
		case wsproto.Plain:
			r := wsproto.Response{Status: 404, Body: []byte("not found\n"), HeadOnly: hs.Method == "HEAD"}
			if hs.Path == "/" || hs.Path == "/index.html" {
				r = wsproto.Response{ContentType: web.ContentType, Body: web.Index(), CSP: web.CSP(), HeadOnly: hs.Method == "HEAD"}
			}
			_, _ = c.Write(wsproto.AppendResponse(nil, r))
			return gnet.Close
		case wsproto.Reject:
			s.log.Info("refusing a WebSocket handshake", "remote", c.RemoteAddr(), "status", hs.Status, "err", hs.Err)
			_, _ = c.Write(hs.Response)
			return gnet.Close
		}
		_, _ = c.Write(hs.Response) // the 101 goes out before any frame
		ss.wroteAside(len(hs.Response))
		consumed, w.upgraded = hs.Consumed, true
	}
	act := gnet.None
	for act == gnet.None {
		m, n, err := w.rd.Next(buf[consumed:])
		consumed += n
		if err != nil {
			if errors.Is(err, wsproto.ErrTooBig) {
				s.stats.LineTooLong.Add(1)
				s.replyErr(l, ss, codec.ErrLineTooLong, nil)
				s.log.Info("closing WebSocket client: message too long", "user", ss.name, "remote", c.RemoteAddr(), "max_line", s.opt.MaxLine)
			} else {
				s.log.Info("closing WebSocket client: protocol error", "user", ss.name, "remote", c.RemoteAddr(), "err", err)
			}
			w.ctrl = wsproto.AppendClose(w.ctrl, wsproto.CloseCode(err), "")
			act = gnet.Close
			break
		}
		switch m.Kind {
		case wsproto.None:
			goto frames
		case wsproto.Text:
			w.lines = append(w.lines, m.Payload...)
			if len(m.Payload) == 0 || m.Payload[len(m.Payload)-1] != '\n' {
				w.lines = append(w.lines, '\n')
			}
		case wsproto.Binary:
			s.replyErr(l, ss, codec.ErrBinaryFrame, nil)
		case wsproto.Ping:
			w.ctrl = wsproto.AppendPong(w.ctrl, m.Payload)
		case wsproto.Close:
			w.ctrl = wsproto.AppendClose(w.ctrl, m.Code, "")
			act = gnet.Close
		}
	}
frames:
	batch.Consume(c, consumed)
	if act == gnet.None && !ss.gone.Load() && !ss.busy() && len(w.lines) > 0 {
		n, a := s.serveLines(l, ss, w.lines)
		w.lines = w.lines[:copy(w.lines, w.lines[n:])]
		act = a
	}
	if ss.gone.Load() {
		w.lines = w.lines[:0]
	}
	if len(w.ctrl) > 0 {
		l.Flush() // replies first, then control frames
		_, _ = c.Write(w.ctrl)
		ss.wroteAside(len(w.ctrl))
		w.ctrl = w.ctrl[:0]
	}
	if act == gnet.None && ss.busy() {
		return s.checkPending(l, ss, len(w.lines)+c.InboundBuffered())
	}
	return act
}

// wsFrame is a WebSocket session's Endpoint.Frame: one text frame per line
// (its "\n" kept in the frame), marks moved onto the frames' payloads.
func wsFrame(dst, lines []byte, marks []batch.Mark) ([]byte, []batch.Mark) {
	mi := 0
	for off := 0; off < len(lines); {
		end := len(lines)
		if i := bytes.IndexByte(lines[off:], '\n'); i >= 0 {
			end = off + i + 1
		}
		var start int
		dst, start = wsproto.BeginText(dst)
		dst = append(dst, lines[off:end]...)
		dst = wsproto.EndText(dst, start) // may move the payload back over unused header room
		pstart := int32(len(dst) - (end - off))
		for ; mi < len(marks) && int(marks[mi].Start) < end; mi++ {
			marks[mi].Start, marks[mi].End = pstart, int32(len(dst))
		}
		off = end
	}
	return dst, marks
}
