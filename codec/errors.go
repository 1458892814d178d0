package codec

// ProtoError is a protocol error whose text is meant for the client: the
// server sends err.Error() verbatim in {"cmd":"error","error":...}.
// The sentinel values below can be matched with errors.Is, also when wrapped
// with detail by fmt.Errorf("%w: ...").
type ProtoError string

func (e ProtoError) Error() string { return string(e) }

// Client-visible protocol errors. The server adds its own (not logged in,
// recipient offline, ...) as ProtoError values too.
const (
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
)
