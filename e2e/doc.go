// Package e2e holds the end-to-end tests of the chat cluster: each test
// starts a private redis-server, two real chat-servers and a chat-proxy on
// free loopback ports (see internal/testenv) and talks to them over raw TCP,
// one JSON object per line, exactly as a telnet user would. The package has
// no code of its own outside its tests.
package e2e
