package codec

// ProtoError is an error whose text is meant for the client: servers send
// err.Error() verbatim in {"cmd":"error","error":...}. The values below can
// be matched with errors.Is, also when wrapped with detail by
// fmt.Errorf("%w: ...").
type ProtoError string

func (e ProtoError) Error() string { return string(e) }

// Every error a client can see, in one list. The texts are part of the
// contract: extend, never reword.
const (
	// Framing and decoding (codec).
	ErrLineTooLong    ProtoError = "line too long"
	ErrInvalidUTF8    ProtoError = "invalid UTF-8"
	ErrInvalidJSON    ProtoError = "invalid JSON"
	ErrNotObject      ProtoError = "request must be a JSON object"
	ErrMissingCmd     ProtoError = "missing cmd"
	ErrUnknownCmd     ProtoError = "unknown cmd"
	ErrFieldType      ProtoError = "cmd, name, send, recv, content and token must be strings"
	ErrBadName        ProtoError = "invalid name: must be 1 to 64 bytes without whitespace or control characters"
	ErrMissingName    ProtoError = "missing name"
	ErrMissingRecv    ProtoError = "missing recv"
	ErrMissingContent ProtoError = "missing content"
	ErrBadID          ProtoError = "id must be a string or a number of at most 128 bytes"
	// WebSocket transport.
	ErrBinaryFrame ProtoError = "binary frames are not supported; send text frames"

	// Sessions.
	ErrNotLoggedIn     ProtoError = "not logged in"
	ErrAlreadyLoggedIn ProtoError = "already logged in; logout first"
	ErrSendMismatch    ProtoError = "send does not match the logged-in name"
	ErrTokenMissing    ProtoError = "login requires a token"
	ErrTokenInvalid    ProtoError = "invalid token"
	ErrTokenExpired    ProtoError = "token expired"

	// A chat's fate.
	ErrOffline        ProtoError = "recipient not online"
	ErrMailboxFull    ProtoError = "recipient's mailbox is full"
	ErrNoForwarding   ProtoError = "forwarding tier unavailable"
	ErrCongested      ProtoError = "forwarding tier congested, try again"
	ErrUnconfirmed    ProtoError = "recipient's server did not confirm delivery; the chat may or may not have arrived"
	ErrMoving         ProtoError = "recipient is moving between servers, try again"
	ErrRoutingDown    ProtoError = "routing store unavailable"
	ErrBusy           ProtoError = "server busy, try again"
	ErrShuttingDown   ProtoError = "server shutting down"
	ErrStarting       ProtoError = "server starting, try again"
	ErrUnreachableDst ProtoError = "recipient's server unreachable"

	// Limits (the connection is closed after most of these).
	ErrPendingOverflow ProtoError = "too much input while a request waits; slow down"
	ErrSlowConsumer    ProtoError = "not reading fast enough (slow consumer)"
	ErrServerFull      ProtoError = "server full, try another server or later"
	ErrIdle            ProtoError = "idle timeout"
	ErrRateLimited     ProtoError = "rate limit exceeded, slow down"
)

// ReasonKicked is the reason in {"cmd":"kicked",...} when the same name
// logged in elsewhere.
const ReasonKicked = "logged in elsewhere"
