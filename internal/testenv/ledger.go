package testenv

import (
	"encoding/json"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Ledger keeps the books of a fault-injection test: every chat the test
// sends (each with an id, and a sequence number per sender-recipient pair
// carried in its content) and every line its clients read (acks, errors,
// deliveries live and stored, kicks). At the end it says what became of
// each acknowledged chat, by the delivery promise of CONTRACT.md:
//
//   - delivered: written to its recipient once (a live delivery);
//   - stored: delivered with "stored":true (from the mailbox, at a login),
//     or still in the recipient's mailbox in Redis at the end (Mailbox);
//   - errored: its sender got an error line with its id, and it was never
//     delivered;
//   - silent: none of these. The only silence the contract allows is
//     declared with Gap (kill -9 of the recipient's own server).
//
// Duplicates are counted over every chat: each delivery (live, stored, or
// a mailbox entry) after the first is one duplicate.
//
// Reorderings are counted per pair (sender, recipient), over deliveries
// that are not duplicates. What is assumed:
//
//   - Live deliveries of a pair come in increasing sequence, within one
//     session and across the recipient's sessions: a session (in the order
//     the test registered them, i.e. login order) never gets a pair's chat
//     older than one an earlier session already got live. That also catches
//     two sessions of one name both receiving after a kick.
//   - Stored deliveries of a pair come in increasing sequence, across all
//     sessions (the mailbox is one FIFO list), and so do the entries left
//     in the mailbox.
//   - Within one session, a live delivery never comes after a stored one
//     of the same pair with a higher sequence: a login drains the mailbox
//     before it goes live, and the order holds across stored and live.
//   - A stored delivery MAY come after live deliveries of the pair with
//     higher sequence numbers: the contract stores an accepted chat whose
//     recipient's server stayed unreachable past the hold (or whose session
//     closed before the chat was written) even while the recipient is
//     online elsewhere or again; those chats reach the recipient at its
//     next mailbox read. Such deliveries are counted in LateStored, not
//     as reorderings.
//
// Lines that carry no ledger chat are not judged, except deliveries: a
// chat whose content the ledger did not write is counted as Foreign (for
// example a chat a rogue peer injected), one delivered to a session of
// another name, or not matching what was sent, as Misdelivered.
//
// A Ledger is safe for concurrent use: client readers feed it from their
// goroutines, senders take chat lines from theirs.
type Ledger struct {
	mu      sync.Mutex
	changed chan struct{}

	prefix   string
	n        int
	chats    map[string]*ledgerChat
	list     []*ledgerChat
	nextSeq  map[ledgerPair]int
	sessions map[string]*ledgerSession
	nsess    int
	// storedMax is, per pair, the highest sequence delivered stored.
	storedMax map[ledgerPair]int
	mbox      map[string][]string // name -> ids in its mailbox (last snapshot)
	gaps      []ledgerGap

	answered     int
	acked        int
	reordered    int
	lateStored   int
	foreign      int
	misdelivered int
	junk         int
	notes        []string
	noted        map[string]int // notes per kind
}

type ledgerPair struct{ send, recv string }

type ledgerChat struct {
	id, send, recv string
	seq            int
	from           *ledgerSession
	sent           time.Time
	acked          bool
	storedAck      bool
	answered       bool
	errs           []string
	live, stored   []*ledgerSession
	mbox           int
}

type ledgerSession struct {
	label, name string
	index       int
	closed      bool
	kicked      bool
	deliveries  int
	sent        int
	answered    int
	// per sender name: the live sequence numbers in delivery order, and
	// the highest live and stored ones
	liveSeqs  map[string][]int
	maxLive   map[string]int
	maxStored map[string]int
}

type ledgerGap struct {
	recv   map[string]bool
	before time.Time
}

// maxNotes bounds the violations of one kind a ledger describes in
// Details.
const maxNotes = 12

// NewLedger returns an empty ledger. Chat ids are prefix followed by a
// number, so ledgers of different tests can share users.
func NewLedger(prefix string) *Ledger {
	return &Ledger{
		changed:   make(chan struct{}),
		prefix:    prefix,
		chats:     make(map[string]*ledgerChat),
		nextSeq:   make(map[ledgerPair]int),
		sessions:  make(map[string]*ledgerSession),
		storedMax: make(map[ledgerPair]int),
		mbox:      make(map[string][]string),
		noted:     make(map[string]int),
	}
}

// notifyLocked wakes everyone waiting on Changed; l.mu held.
func (l *Ledger) notifyLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Changed returns a channel closed at the ledger's next change.
func (l *Ledger) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changed
}

// notef records a violation of kind, up to maxNotes of each kind.
func (l *Ledger) notef(kind, format string, args ...any) {
	if l.noted[kind] < maxNotes {
		l.noted[kind]++
		l.notes = append(l.notes, fmt.Sprintf(format, args...))
	}
}

// Session registers a client session: label names it in Read and Chat,
// name is the user it logged in as. Register sessions in login order: the
// cross-session order check relies on it. Registering a label again is a
// no-op.
func (l *Ledger) Session(label, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions[label] != nil {
		return
	}
	l.nsess++
	l.sessions[label] = &ledgerSession{
		label: label, name: name, index: l.nsess,
		liveSeqs: map[string][]int{}, maxLive: map[string]int{}, maxStored: map[string]int{},
	}
}

// Closed records that session label's connection closed: chats it sent
// and had no answer for are no longer waited for.
func (l *Ledger) Closed(label string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if ss := l.sessions[label]; ss != nil {
		ss.closed = true
	}
	l.notifyLocked()
}

// Content returns the content the ledger writes for chat id, sequence seq,
// padded with pad bytes.
func ledgerContent(id string, seq, pad int) string {
	s := id + " " + strconv.Itoa(seq)
	if pad > 0 {
		s += " " + strings.Repeat("p", pad)
	}
	return s
}

// parseContent inverts ledgerContent.
func parseContent(s string) (id string, seq int, ok bool) {
	f := strings.SplitN(s, " ", 3)
	if len(f) < 2 {
		return "", 0, false
	}
	n, err := strconv.Atoi(f[1])
	if err != nil {
		return "", 0, false
	}
	return f[0], n, true
}

// Chat records a chat that session label (registered with Session) sends
// to recv, and returns its id and its request line (without "\n"). pad
// bytes are added to the content. The caller must send the line.
func (l *Ledger) Chat(label, recv string, pad int) (id, line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ss := l.sessions[label]
	if ss == nil {
		panic("testenv: Ledger.Chat from unregistered session " + label)
	}
	l.n++
	id = l.prefix + strconv.Itoa(l.n)
	p := ledgerPair{ss.name, recv}
	l.nextSeq[p]++
	c := &ledgerChat{id: id, send: ss.name, recv: recv, seq: l.nextSeq[p], from: ss, sent: time.Now()}
	l.chats[id] = c
	l.list = append(l.list, c)
	ss.sent++
	b, _ := json.Marshal(map[string]any{"cmd": "chat", "send": ss.name, "recv": recv, "content": ledgerContent(id, c.seq, pad), "id": id})
	return id, string(b)
}

// Outstanding returns how many chats session label sent that have had
// neither an ack nor an error yet.
func (l *Ledger) Outstanding(label string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	ss := l.sessions[label]
	if ss == nil {
		return 0
	}
	return ss.sent - ss.answered
}

// Counts returns how many chats were sent, answered (acked or errored)
// and acked so far.
func (l *Ledger) Counts() (sent, answered, acked int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.list), l.answered, l.acked
}

// Deliveries returns how many chat lines the sessions have read so far.
// A caller waiting for the end of a mailbox drain compares two readings:
// a snapshot of a mailbox that is being drained may still hold chats
// that are on their way to the client.
func (l *Ledger) Deliveries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ss := range l.sessions {
		n += ss.deliveries
	}
	return n
}

// ledgerLine is what the ledger reads of a line.
type ledgerLine struct {
	Cmd     string          `json:"cmd"`
	ID      json.RawMessage `json:"id"`
	Stored  bool            `json:"stored"`
	Send    string          `json:"send"`
	Recv    string          `json:"recv"`
	Content string          `json:"content"`
	Error   string          `json:"error"`
}

// Read feeds one line (without "\n") that session label read.
func (l *Ledger) Read(label, line string) {
	var m ledgerLine
	err := json.Unmarshal([]byte(line), &m)
	l.mu.Lock()
	defer l.mu.Unlock()
	defer l.notifyLocked()
	ss := l.sessions[label]
	if err != nil {
		l.junk++
		l.notef("junk", "%s read a line that is not a JSON object: %.80q", label, line)
		return
	}
	var id string
	if len(m.ID) > 0 {
		_ = json.Unmarshal(m.ID, &id)
	}
	switch m.Cmd {
	case "ack":
		if c := l.chats[id]; c != nil {
			if c.acked {
				l.notef("ack", "%s: chat %s acked twice", label, id)
			} else {
				l.acked++
			}
			c.acked, c.storedAck = true, m.Stored
			l.answerLocked(c)
		}
	case "error":
		if c := l.chats[id]; c != nil {
			c.errs = append(c.errs, m.Error)
			l.answerLocked(c)
		}
	case "kicked":
		if ss != nil {
			ss.kicked = true
		}
	case "chat":
		l.deliveryLocked(ss, label, &m, line)
	}
}

func (l *Ledger) answerLocked(c *ledgerChat) {
	if c.answered {
		return
	}
	c.answered = true
	c.from.answered++
	l.answered++
}

func (l *Ledger) deliveryLocked(ss *ledgerSession, label string, m *ledgerLine, line string) {
	if ss == nil {
		l.notef("misdelivered", "delivery to unregistered session %s: %.120q", label, line)
		l.misdelivered++
		return
	}
	ss.deliveries++
	id, seq, ok := parseContent(m.Content)
	c := l.chats[id]
	if !ok || c == nil {
		l.foreign++
		l.notef("foreign", "%s got a chat the test did not send: %.120q", label, line)
		return
	}
	if c.seq != seq || c.send != m.Send || c.recv != m.Recv || ss.name != m.Recv {
		l.misdelivered++
		l.notef("misdelivered", "%s (%s) got chat %s as send=%q recv=%q seq=%d; it was sent %s->%s seq %d", label, ss.name, id, m.Send, m.Recv, seq, c.send, c.recv, c.seq)
		return
	}
	dup := len(c.live)+len(c.stored) > 0
	if m.Stored {
		c.stored = append(c.stored, ss)
	} else {
		c.live = append(c.live, ss)
	}
	if dup {
		l.notef("dup", "%s got chat %s (%s->%s seq %d) again (stored=%v)", label, id, c.send, c.recv, seq, m.Stored)
		return
	}
	p := ledgerPair{c.send, c.recv}
	if m.Stored {
		if seq <= l.storedMax[p] {
			l.reordered++
			l.notef("reorder", "%s: stored chat %s->%s seq %d after stored seq %d", label, c.send, c.recv, seq, l.storedMax[p])
		}
		if seq < ss.maxLive[c.send] {
			l.lateStored++
		}
		l.storedMax[p] = max(l.storedMax[p], seq)
		ss.maxStored[c.send] = max(ss.maxStored[c.send], seq)
		return
	}
	if last := max(ss.maxLive[c.send], ss.maxStored[c.send]); seq <= last {
		l.reordered++
		l.notef("reorder", "%s: live chat %s->%s seq %d after seq %d (live %d, stored %d) in the same session", label, c.send, c.recv, seq, last, ss.maxLive[c.send], ss.maxStored[c.send])
	}
	ss.maxLive[c.send] = max(ss.maxLive[c.send], seq)
	ss.liveSeqs[c.send] = append(ss.liveSeqs[c.send], seq)
}

// Mailbox records a snapshot of name's mailbox: entries as Redis holds
// them, "<ts ms> <delivery JSON>", oldest first (see MailboxEntries). A
// later snapshot of the same name replaces the earlier one. It returns how
// many entries are chats already delivered (a drain may have written a page
// and not yet removed it: take a new snapshot; if they stay, they are
// duplicates).
func (l *Ledger) Mailbox(name string, entries []string) (overlap int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range l.mbox[name] {
		if c := l.chats[id]; c != nil {
			c.mbox--
		}
	}
	l.mbox[name] = nil
	for _, e := range entries {
		_, js, ok := strings.Cut(e, " ")
		var m ledgerLine
		if !ok || json.Unmarshal([]byte(js), &m) != nil {
			l.junk++
			l.notef("junk", "mailbox of %s holds a malformed entry %.80q", name, e)
			continue
		}
		id, seq, ok := parseContent(m.Content)
		c := l.chats[id]
		if !ok || c == nil || c.recv != name || c.seq != seq || c.send != m.Send {
			l.foreign++
			l.notef("foreign", "mailbox of %s holds a chat the test did not send to it: %.120q", name, e)
			continue
		}
		l.mbox[name] = append(l.mbox[name], id)
		c.mbox++
		if len(c.live)+len(c.stored) > 0 {
			overlap++
		}
	}
	l.notifyLocked()
	return overlap
}

// Gap declares the contract's one allowed silence: recipients (by name)
// whose own server was killed with kill -9 at time before. An acked chat to
// one of them, sent before then, that is neither delivered, stored nor
// errored counts as Gap instead of Silent.
func (l *Ledger) Gap(recipients []string, before time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	g := ledgerGap{recv: map[string]bool{}, before: before}
	for _, r := range recipients {
		g.recv[r] = true
	}
	l.gaps = append(l.gaps, g)
}

func (l *Ledger) inGapLocked(c *ledgerChat) bool {
	for _, g := range l.gaps {
		if g.recv[c.recv] && c.sent.Before(g.before) {
			return true
		}
	}
	return false
}

// Recipients returns the names chats were sent to, sorted.
func (l *Ledger) Recipients() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, c := range l.list {
		if !seen[c.recv] {
			seen[c.recv] = true
			out = append(out, c.recv)
		}
	}
	sort.Strings(out)
	return out
}

// Unsettled returns how many chats the test still waits for: acked ones
// neither delivered, errored nor in the last mailbox snapshot, and sent
// ones without an answer whose session is still open; and a few examples.
func (l *Ledger) Unsettled() (n int, examples []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.list {
		var why string
		switch {
		case !c.answered && !c.from.closed:
			why = "unanswered"
		case c.acked && len(c.live)+len(c.stored)+c.mbox == 0 && len(c.errs) == 0:
			why = "acked, not delivered"
		default:
			continue
		}
		n++
		if len(examples) < 5 {
			examples = append(examples, fmt.Sprintf("%s %s->%s seq %d (%s)", c.id, c.send, c.recv, c.seq, why))
		}
	}
	return n, examples
}

// Trace describes the chats of one pair with sequence numbers in [from,
// to], one line each: acked, errors, deliveries (session, live or
// stored), mailbox entries. For reports of a violation.
func (l *Ledger) Trace(send, recv string, from, to int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, c := range l.list {
		if c.send != send || c.recv != recv || c.seq < from || c.seq > to {
			continue
		}
		var d []string
		for _, ss := range c.live {
			d = append(d, "live@"+ss.label)
		}
		for _, ss := range c.stored {
			d = append(d, "stored@"+ss.label)
		}
		out = append(out, fmt.Sprintf("#%d %s from %s sent %s acked=%v stored_ack=%v errors=%q deliveries=%v mailbox=%d",
			c.seq, c.id, c.from.label, c.sent.Format("15:04:05.000"), c.acked, c.storedAck, c.errs, d, c.mbox))
	}
	return out
}

// SessionState describes one session as the ledger saw it.
type SessionState struct {
	Name       string
	Closed     bool
	Kicked     bool
	Deliveries int // chat lines read, duplicates and foreign ones included
}

// SessionState returns what the ledger knows of session label.
func (l *Ledger) SessionState(label string) SessionState {
	l.mu.Lock()
	defer l.mu.Unlock()
	ss := l.sessions[label]
	if ss == nil {
		return SessionState{}
	}
	return SessionState{Name: ss.name, Closed: ss.closed, Kicked: ss.kicked, Deliveries: ss.deliveries}
}

// LedgerResult is a ledger's verdict.
type LedgerResult struct {
	// Acknowledged chats, each in exactly one of Delivered, Stored,
	// Errored, Silent and Gap.
	Acked, Delivered, Stored, Errored, Silent, Gap int
	// Dup counts deliveries after a chat's first (all chats); Reordered
	// counts pair-order violations (see Ledger).
	Dup, Reordered int

	Sent        int // chats sent
	Refused     int // answered with an error, never acked
	Unanswered  int // neither acked nor errored (the sender's connection closed)
	StoredAcks  int // acks with "stored":true
	LateStored  int // stored deliveries after later live ones of the pair (allowed)
	Unconfirmed int // acked chats errored "did not confirm delivery" that were delivered after all (allowed)
	// Violations of their own: deliveries of chats the test did not send,
	// or to the wrong session; chats delivered although their sender got
	// an error other than "did not confirm" (an error ends a chat);
	// unparseable lines.
	Foreign, Misdelivered, ErrDelivered, Junk int
	// Errors counts the error reasons of acked chats that ended errored,
	// Refusals those of chats refused (never acked).
	Errors, Refusals map[string]int
	// SilentIDs lists some silent chats.
	SilentIDs []string
	notes     []string
}

// String is the one line a test prints.
func (r LedgerResult) String() string {
	s := fmt.Sprintf("acked=%d delivered=%d stored=%d errored=%d silent=%d dup=%d reordered=%d",
		r.Acked, r.Delivered, r.Stored, r.Errored, r.Silent, r.Dup, r.Reordered)
	if r.Gap > 0 {
		s += fmt.Sprintf(" gap=%d", r.Gap)
	}
	return s
}

// Details describes everything else: the informational counts, the error
// reasons and the violations noted.
func (r LedgerResult) Details() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sent=%d refused=%d unanswered=%d stored_acks=%d late_stored=%d unconfirmed_delivered=%d foreign=%d misdelivered=%d err_delivered=%d junk=%d",
		r.Sent, r.Refused, r.Unanswered, r.StoredAcks, r.LateStored, r.Unconfirmed, r.Foreign, r.Misdelivered, r.ErrDelivered, r.Junk)
	for _, e := range []struct {
		title string
		m     map[string]int
	}{{"errors of acked chats", r.Errors}, {"refusals", r.Refusals}} {
		if len(e.m) == 0 {
			continue
		}
		keys := make([]string, 0, len(e.m))
		for k := range e.m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		fmt.Fprintf(&b, "\n%s:", e.title)
		for _, k := range keys {
			fmt.Fprintf(&b, "\n  %d × %q", e.m[k], k)
		}
	}
	if len(r.SilentIDs) > 0 {
		fmt.Fprintf(&b, "\nsilent: %s", strings.Join(r.SilentIDs, ", "))
	}
	for _, n := range r.notes {
		b.WriteString("\n  ")
		b.WriteString(n)
	}
	return b.String()
}

// OK reports whether the contract held: nothing silent, duplicated,
// reordered, foreign, misdelivered, or delivered after an error.
func (r LedgerResult) OK() bool {
	return r.Silent == 0 && r.Dup == 0 && r.Reordered == 0 && r.Foreign == 0 && r.Misdelivered == 0 && r.ErrDelivered == 0 && r.Junk == 0
}

// unconfirmedPrefix starts the one error that leaves a chat's fate open.
const unconfirmedPrefix = "recipient's server did not confirm delivery"

// Result classifies every chat.
func (l *Ledger) Result() LedgerResult { return l.ResultWhere(nil) }

// ResultWhere classifies the chats keep accepts (every chat when keep is
// nil). The order and foreign-delivery counts are the whole ledger's.
func (l *Ledger) ResultWhere(keep func(send, recv string) bool) LedgerResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := LedgerResult{
		Reordered: l.reordered, LateStored: l.lateStored, Foreign: l.foreign,
		Misdelivered: l.misdelivered, Junk: l.junk, Errors: map[string]int{}, Refusals: map[string]int{},
	}
	r.notes = append(r.notes, l.notes...)
	noted := maps.Clone(l.noted)
	note := func(kind, format string, args ...any) {
		if noted[kind] < maxNotes {
			noted[kind]++
			r.notes = append(r.notes, fmt.Sprintf(format, args...))
		}
	}
	for _, c := range l.list {
		if keep != nil && !keep(c.send, c.recv) {
			continue
		}
		r.Sent++
		n := len(c.live) + len(c.stored) + c.mbox
		if n > 1 {
			r.Dup += n - 1
			if len(c.live)+len(c.stored) <= 1 {
				note("dup", "chat %s %s->%s seq %d delivered %d times and still in the mailbox %d times", c.id, c.send, c.recv, c.seq, len(c.live)+len(c.stored), c.mbox)
			}
		}
		hardErr := ""
		for _, e := range c.errs {
			if !strings.HasPrefix(e, unconfirmedPrefix) {
				hardErr = e
			}
		}
		if n > 0 && hardErr != "" {
			r.ErrDelivered++
			note("errdelivered", "chat %s %s->%s seq %d was delivered (live %d, stored %d, mailbox %d) but its sender got %q", c.id, c.send, c.recv, c.seq, len(c.live), len(c.stored), c.mbox, hardErr)
		}
		switch {
		case !c.answered:
			r.Unanswered++
		case !c.acked:
			r.Refused++
			r.Refusals[c.errs[0]]++
		}
		if !c.acked {
			continue
		}
		r.Acked++
		if c.storedAck {
			r.StoredAcks++
		}
		switch {
		case len(c.live) > 0:
			r.Delivered++
			if len(c.errs) > 0 {
				r.Unconfirmed++
			}
		case n > 0:
			r.Stored++
			if len(c.errs) > 0 {
				r.Unconfirmed++
			}
		case len(c.errs) > 0:
			r.Errored++
			r.Errors[c.errs[0]]++
		case l.inGapLocked(c):
			r.Gap++
		default:
			r.Silent++
			if len(r.SilentIDs) < 20 {
				r.SilentIDs = append(r.SilentIDs, fmt.Sprintf("%s(%s->%s #%d)", c.id, c.send, c.recv, c.seq))
			}
		}
	}
	// The mailboxes: each pair's entries in increasing order, after the
	// pair's stored deliveries (a login delivers them in list order).
	for name, ids := range l.mbox {
		last := map[string]int{}
		for _, id := range ids {
			c := l.chats[id]
			if len(c.live)+len(c.stored) > 0 {
				continue // a duplicate, counted as such
			}
			prev := max(last[c.send], l.storedMax[ledgerPair{c.send, name}])
			if c.seq <= prev {
				r.Reordered++
				note("reorder", "mailbox of %s: %s->%s seq %d after seq %d", name, c.send, name, c.seq, prev)
			}
			last[c.send] = max(last[c.send], c.seq)
		}
	}
	// Live order across a recipient's sessions, in login order.
	byName := map[string][]*ledgerSession{}
	for _, ss := range l.sessions {
		byName[ss.name] = append(byName[ss.name], ss)
	}
	for name, list := range byName {
		sort.Slice(list, func(i, j int) bool { return list[i].index < list[j].index })
		before := map[string]int{} // sender -> highest live seq in earlier sessions
		for _, ss := range list {
			for send, seqs := range ss.liveSeqs {
				for _, q := range seqs {
					if q < before[send] {
						r.Reordered++
						note("reorder", "%s (%s) got live seq %d from %s after an earlier session got seq %d", ss.label, name, q, send, before[send])
					}
				}
			}
			for send, m := range ss.maxLive {
				before[send] = max(before[send], m)
			}
		}
	}
	return r
}

// MailboxEntries returns the entries of the Redis list key (a mailbox, see
// route.MailboxKey) at the Redis server addr, oldest first.
func MailboxEntries(addr, key string) ([]string, error) {
	v, err := RedisDo(addr, RedisAuth{}, "LRANGE", key, "0", "-1")
	if err != nil {
		return nil, err
	}
	arr, ok := v.([]any)
	if !ok && v != nil {
		return nil, fmt.Errorf("testenv: LRANGE %s answered %T", key, v)
	}
	out := make([]string, 0, len(arr))
	for _, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("testenv: LRANGE %s: element %T", key, e)
		}
		out = append(out, s)
	}
	return out, nil
}
