// Package codec is the wire format of the chat cluster: newline framing with a
// line cap, client request decoding, reply and delivery encoding, and the
// frames of the server<->proxy link.
//
// It knows nothing of sockets, event loops or Redis. Every function is safe
// for concurrent use; none retains the slices it is given unless its doc
// comment says so.
package codec
