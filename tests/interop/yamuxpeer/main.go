// Command yamuxpeer is the reference peer for muxtunnel's interop tests: it speaks yamux through
// hashicorp/yamux (the Debian package, 2019 API) and follows the same echo contract as
// `python -m mux echo-server|echo-client`, so either side of every test can be swapped.
//
//	yamuxpeer echo-server --listen HOST:PORT [--client-side] [--goaway]
//	yamuxpeer echo-client --connect HOST:PORT --streams N --bytes B [--server-side]
//	yamuxpeer ping        --connect HOST:PORT [--count N] [--server-side]
//	yamuxpeer goaway      --connect HOST:PORT [--server-side]
//	yamuxpeer rst         --connect HOST:PORT [--streams N] [--server-side]
//
// Every subcommand also takes --window BYTES (MaxStreamWindowSize, default and minimum 256 KiB)
// and --keepalive SECONDS (keepalive ping interval, default 30 as in yamux; keepalive is always
// on, and a pong missing for 10 s kills the session). Client subcommands take --timeout SECONDS
// (default 60) for the whole run. Success prints one line on stdout ("ok ...") and exits 0; a
// failed check prints the reason on stderr and exits 1; bad usage exits 2.
//
// What this yamux version can and cannot do shapes the checks:
//
//   - Stream has no CloseWrite: Close sends FIN, and from then on Read returns EOF once the
//     buffer is empty. So a client reads the whole echo before it closes, and learns that the
//     peer closed its side too by watching the stream leave the session (NumStreams).
//   - Stream has no Reset. The only RST this library sends is a refusal of an incoming SYN: while
//     its own GoAway is in force, or when the accept backlog is full. `echo-server --goaway` uses
//     the first to refuse every stream. Receiving an RST works: Read and Write then fail with
//     ErrConnectionReset, which is what `rst` looks for.
//   - GoAway(normal) only sets a flag: the receiver's OpenStream then fails with ErrRemoteGoAway,
//     the sender answers new SYNs with RST, and streams already open carry on. Nothing closes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

const usage = `usage: yamuxpeer SUBCOMMAND [flags]

  echo-server --listen HOST:PORT [--client-side] [--goaway]
  echo-client --connect HOST:PORT --streams N --bytes B [--server-side]
  ping        --connect HOST:PORT [--count N] [--server-side]
  goaway      --connect HOST:PORT [--server-side]
  rst         --connect HOST:PORT [--streams N] [--server-side]

Run "yamuxpeer SUBCOMMAND -h" for the flags of one subcommand.
`

var logger = log.New(os.Stderr, "yamuxpeer: ", log.Lmicroseconds)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	commands := map[string]func([]string) error{
		"echo-server": echoServer,
		"echo-client": echoClient,
		"ping":        ping,
		"goaway":      goAway,
		"rst":         rst,
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "yamuxpeer %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// options holds every flag; each subcommand registers the ones it uses.
type options struct {
	addr       string
	otherRole  bool // --client-side for the server, --server-side for the clients
	goAway     bool
	windowSize uint
	keepaliveS float64
	timeoutS   float64
	streams    int
	bytes      int
	count      int
}

func newFlags(name string) (*flag.FlagSet, *options) {
	o := &options{}
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.UintVar(&o.windowSize, "window", 256*1024, "MaxStreamWindowSize in bytes (at least 256 KiB)")
	fs.Float64Var(&o.keepaliveS, "keepalive", 30, "seconds between keepalive pings")
	return fs, o
}

// clientFlags registers the flags every connecting subcommand shares.
func clientFlags(name string) (*flag.FlagSet, *options) {
	fs, o := newFlags(name)
	fs.StringVar(&o.addr, "connect", "", "HOST:PORT of the peer (required)")
	fs.BoolVar(&o.otherRole, "server-side", false, "run the session as yamux.Server, the side whose streams get even IDs")
	fs.Float64Var(&o.timeoutS, "timeout", 60, "seconds the whole run may take")
	return fs, o
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

func newSession(conn net.Conn, client bool, o *options) (*yamux.Session, error) {
	cfg := yamux.DefaultConfig()
	cfg.EnableKeepAlive = true
	cfg.KeepAliveInterval = seconds(o.keepaliveS)
	cfg.MaxStreamWindowSize = uint32(o.windowSize)
	cfg.LogOutput = os.Stderr
	if client {
		return yamux.Client(conn, cfg)
	}
	return yamux.Server(conn, cfg)
}

// stage says what a client is doing, for the message printed if --timeout expires.
var stage atomic.Value

func setStage(format string, args ...interface{}) { stage.Store(fmt.Sprintf(format, args...)) }

// connect dials the peer, starts the --timeout clock and runs a client-side session (server-side
// with --server-side). gate, if not nil, holds back the session's reads until it is closed.
func connect(o *options, gate chan struct{}) (*yamux.Session, error) {
	if o.addr == "" {
		return nil, errors.New("--connect HOST:PORT is required")
	}
	timeout := seconds(o.timeoutS)
	setStage("connecting to %s", o.addr)
	time.AfterFunc(timeout, func() {
		fmt.Fprintf(os.Stderr, "yamuxpeer %s: timed out after %s while %s\n", os.Args[1], timeout, stage.Load())
		os.Exit(1)
	})
	conn, err := net.DialTimeout("tcp", o.addr, timeout)
	if err != nil {
		return nil, err
	}
	var c net.Conn = conn
	if gate != nil {
		c = &gatedConn{Conn: conn, gate: gate}
	}
	return newSession(c, !o.otherRole, o)
}

// gatedConn blocks reads until gate is closed, so a session can put frames on the wire before
// it has seen any frame from the peer. Without it, which of two crossing frames (our SYN, their
// GoAway) each side processes first would be a race.
type gatedConn struct {
	net.Conn
	gate chan struct{}
}

func (c *gatedConn) Read(p []byte) (int, error) {
	<-c.gate
	return c.Conn.Read(p)
}

// ---- echo-server ----

func echoServer(args []string) error {
	fs, o := newFlags("echo-server")
	fs.StringVar(&o.addr, "listen", "127.0.0.1:0", "HOST:PORT to listen on (port 0: any free port)")
	fs.BoolVar(&o.otherRole, "client-side", false, "run sessions as yamux.Client, the side whose streams get odd IDs")
	fs.BoolVar(&o.goAway, "goaway", false,
		"send GoAway before reading anything, so every stream the peer opens is refused with RST")
	fs.Parse(args)

	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr()) // os.Stdout is unbuffered: the line is out now
	for {
		conn, err := ln.Accept()
		if err != nil {
			return err
		}
		go serveSession(conn, o)
	}
}

func serveSession(conn net.Conn, o *options) {
	peer := conn.RemoteAddr()
	var c net.Conn = conn
	var gate chan struct{}
	if o.goAway {
		gate = make(chan struct{})
		c = &gatedConn{Conn: conn, gate: gate}
	}
	sess, err := newSession(c, o.otherRole, o)
	if err != nil {
		logger.Printf("%s: %v", peer, err)
		conn.Close()
		return
	}
	defer sess.Close()
	if o.goAway {
		// From here on yamux answers each incoming SYN with RST (session.go incomingStream).
		if err := sess.GoAway(); err != nil {
			logger.Printf("%s: sending GoAway: %v", peer, err)
			return
		}
		close(gate)
	}
	logger.Printf("%s: session started", peer)
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			logger.Printf("%s: session ended: %v", peer, err)
			return
		}
		go echoStream(st)
	}
}

// echoStream copies a stream's bytes back until the peer's FIN, then closes our side.
func echoStream(st *yamux.Stream) {
	n, err := io.Copy(st, st)
	if err != nil {
		logger.Printf("stream %d: echo failed after %d bytes: %v", st.StreamID(), n, err)
	}
	st.Close()
}

// ---- echo-client ----

func echoClient(args []string) error {
	fs, o := clientFlags("echo-client")
	fs.IntVar(&o.streams, "streams", 1, "streams to open at once")
	fs.IntVar(&o.bytes, "bytes", 1<<20, "bytes to send and expect back on each stream")
	fs.Parse(args)
	if o.streams < 1 || o.bytes < 0 {
		return errors.New("--streams must be at least 1 and --bytes not negative")
	}
	sess, err := connect(o, nil)
	if err != nil {
		return err
	}
	defer sess.Close()

	var done int32
	setStage("echoing: 0 of %d streams done", o.streams)
	results := make(chan error, o.streams)
	for i := 0; i < o.streams; i++ {
		go func(i int) {
			err := echoCheck(sess, i, o.bytes)
			if err != nil {
				err = fmt.Errorf("stream #%d: %w", i, err)
			}
			setStage("echoing: %d of %d streams done", atomic.AddInt32(&done, 1), o.streams)
			results <- err
		}(i)
	}
	for i := 0; i < o.streams; i++ {
		if err := <-results; err != nil {
			return err
		}
	}
	if err := waitPeerClosed(sess); err != nil {
		return err
	}
	fmt.Printf("ok %d streams %d bytes\n", o.streams, o.bytes)
	return nil
}

// echoCheck opens a stream, sends size pattern bytes while reading the echo concurrently,
// verifies every byte, then closes the stream.
func echoCheck(sess *yamux.Session, i, size int) error {
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer st.Close()
	written := make(chan error, 1)
	go func() { written <- writePattern(st, newPattern(i), size) }()
	if err := readPattern(st, newPattern(i), size); err != nil {
		return err
	}
	if err := <-written; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return st.Close()
}

// waitPeerClosed waits until every stream has left the session. After our Close, yamux drops a
// stream only once the peer's FIN (or RST) for it has arrived, so this checks that the peer closes
// its side after reading ours.
func waitPeerClosed(sess *yamux.Session) error {
	for n := sess.NumStreams(); n > 0; n = sess.NumStreams() {
		setStage("waiting for the peer's FIN on %d streams", n)
		select {
		case <-time.After(10 * time.Millisecond):
		case <-sess.CloseChan():
			return fmt.Errorf("session closed with %d streams not closed by the peer", sess.NumStreams())
		}
	}
	return nil
}

// filler produces the bytes a reader expects next.
type filler interface{ fill([]byte) }

// pattern is the byte sequence stream #i carries: xorshift64 seeded by i, so the reader
// regenerates what the writer sent instead of keeping a copy of it.
type pattern struct{ x uint64 }

func newPattern(i int) *pattern { return &pattern{x: uint64(i+1) * 0x9E3779B97F4A7C15} }

func (p *pattern) fill(b []byte) {
	for i := range b {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		b[i] = byte(p.x >> 32)
	}
}

const chunkSize = 32 * 1024

func writePattern(w io.Writer, p *pattern, size int) error {
	buf := make([]byte, chunkSize)
	for left := size; left > 0; {
		chunk := buf[:min(left, len(buf))]
		p.fill(chunk)
		if _, err := w.Write(chunk); err != nil {
			return fmt.Errorf("after %d of %d bytes: %w", size-left, size, err)
		}
		left -= len(chunk)
	}
	return nil
}

// readPattern reads exactly size bytes and compares them with the pattern as they arrive.
func readPattern(r io.Reader, p filler, size int) error {
	got, want := make([]byte, chunkSize), make([]byte, chunkSize)
	for off := 0; off < size; {
		n, err := r.Read(got[:min(size-off, len(got))])
		p.fill(want[:n])
		for j := 0; j < n; j++ {
			if got[j] != want[j] {
				return fmt.Errorf("echo differs at byte %d: got %#02x, want %#02x", off+j, got[j], want[j])
			}
		}
		off += n
		if err != nil && off < size {
			return fmt.Errorf("echo ended after %d of %d bytes: %w", off, size, err)
		}
	}
	return nil
}

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// ---- ping ----

// ping checks that the peer answers Ping frames: each session.Ping() must return an RTT.
func ping(args []string) error {
	fs, o := clientFlags("ping")
	fs.IntVar(&o.count, "count", 3, "pings to send")
	fs.Parse(args)
	sess, err := connect(o, nil)
	if err != nil {
		return err
	}
	defer sess.Close()
	for i := 0; i < o.count; i++ {
		setStage("waiting for pong %d", i)
		rtt, err := sess.Ping()
		if err != nil {
			return fmt.Errorf("ping %d: %w", i, err)
		}
		logger.Printf("ping %d: rtt %s", i, rtt)
	}
	fmt.Println("ok ping")
	return nil
}

// ---- goaway ----

const goAwayBytes = 64 * 1024 // below the 256 KiB window, so writing it all before reading is safe

// goAway checks the receiving side of GoAway(normal) against an echo server: we send GoAway in the
// middle of a stream, and the peer must treat it as "open no new streams", not as the end of the
// session: the open stream still echoes all its bytes, pings are answered, and the peer still
// closes its side of the stream after our FIN. (An echo server opens no streams, so that it
// refrains from opening them cannot be observed here.)
func goAway(args []string) error {
	fs, o := clientFlags("goaway")
	fs.Parse(args)
	sess, err := connect(o, nil)
	if err != nil {
		return err
	}
	defer sess.Close()

	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	sent := newPattern(0)
	setStage("writing the first half of the stream")
	if err := writePattern(st, sent, goAwayBytes/2); err != nil {
		return fmt.Errorf("write before GoAway: %w", err)
	}
	setStage("sending GoAway")
	if err := sess.GoAway(); err != nil {
		return fmt.Errorf("sending GoAway: %w", err)
	}
	setStage("writing the second half of the stream after GoAway")
	if err := writePattern(st, sent, goAwayBytes-goAwayBytes/2); err != nil {
		return fmt.Errorf("write after GoAway: %w", err)
	}
	setStage("reading the echo after GoAway")
	if err := readPattern(st, newPattern(0), goAwayBytes); err != nil {
		return fmt.Errorf("after GoAway: %w", err)
	}
	setStage("pinging after GoAway")
	if _, err := sess.Ping(); err != nil {
		return fmt.Errorf("ping after GoAway: %w", err)
	}
	if err := st.Close(); err != nil {
		return err
	}
	if err := waitPeerClosed(sess); err != nil {
		return err
	}
	fmt.Println("ok goaway")
	return nil
}

// ---- rst ----

// rst checks the receiving side of RST. It opens streams one at a time, keeping each open after a
// one-byte echo, until the peer refuses one with RST (a peer with a stream limit, or one that
// refuses all, like `echo-server --goaway`). The refused stream's Read or Write must fail with
// ErrConnectionReset, and the reset must stay local to it: pings are answered, the streams
// opened before still echo, and the peer closes them after our FIN. Refusing by GoAway alone
// (our OpenStream failing with ErrRemoteGoAway) does not count.
func rst(args []string) error {
	fs, o := clientFlags("rst")
	fs.IntVar(&o.streams, "streams", 4096, "give up if this many streams were opened without a reset")
	fs.Parse(args)

	// The first SYN goes out before we read anything, so that a peer refusing everything
	// must answer it with RST; otherwise we might see its GoAway first and not open at all.
	gate := make(chan struct{})
	sess, err := connect(o, gate)
	if err != nil {
		return err
	}
	defer sess.Close()

	var live []*yamux.Stream
	reset := false
	for i := 0; i < o.streams && !reset; i++ {
		setStage("echoing one byte on stream #%d (%d open)", i, len(live))
		st, err := sess.OpenStream()
		if err != nil {
			return fmt.Errorf("open stream #%d: %w", i, err)
		}
		_, err = st.Write([]byte{byte(i)})
		if i == 0 {
			close(gate)
		}
		if err == nil {
			err = readPattern(st, &constPattern{byte(i)}, 1)
		}
		switch {
		case err == nil:
			live = append(live, st)
		case errors.Is(err, yamux.ErrConnectionReset):
			logger.Printf("peer reset stream #%d (id %d) with %d streams open", i, st.StreamID(), len(live))
			reset = true
		default:
			return fmt.Errorf("stream #%d: %w", i, err)
		}
	}
	if !reset {
		return fmt.Errorf("the peer reset none of %d streams", o.streams)
	}

	setStage("pinging after the reset")
	if _, err := sess.Ping(); err != nil {
		return fmt.Errorf("ping after the reset: %w", err)
	}
	for i, st := range live {
		setStage("echoing on stream #%d after the reset", i)
		if _, err := st.Write([]byte{0xA5}); err != nil {
			return fmt.Errorf("stream #%d after the reset: %w", i, err)
		}
		if err := readPattern(st, &constPattern{0xA5}, 1); err != nil {
			return fmt.Errorf("stream #%d after the reset: %w", i, err)
		}
		st.Close()
	}
	if err := waitPeerClosed(sess); err != nil {
		return err
	}
	fmt.Println("ok rst")
	return nil
}

// constPattern is the byte rst echoes: the same value over and over.
type constPattern struct{ b byte }

func (p *constPattern) fill(b []byte) {
	for i := range b {
		b[i] = p.b
	}
}
