// gotunnel is a minimal reverse TCP tunnel on hashicorp/yamux, built only as a
// benchmark peer for muxtunnel. It mirrors how frp's tcp_mux uses yamux: one
// carrier connection from client to server, one yamux stream per visitor.
//
//	gotunnel server --control ADDR --public ADDR [--public ADDR]... --window BYTES
//	gotunnel client --server ADDR --target ADDR [--target ADDR]... --window BYTES
//
// The i-th --public address of the server maps to the i-th --target of the
// client; the first byte written on each stream is that index. Both directions
// are copied with half-close (FIN on one side becomes CloseWrite on the other).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

type addrList []string

func (a *addrList) String() string     { return strings.Join(*a, ",") }
func (a *addrList) Set(v string) error { *a = append(*a, v); return nil }

const copyBuf = 32 * 1024

func yamuxConfig(window uint) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.MaxStreamWindowSize = uint32(window)
	cfg.LogOutput = ioutil.Discard
	return cfg
}

type closeWriter interface{ CloseWrite() error }

// pipe copies both directions between a and b, half-closing each side when its
// source reaches EOF, and closes both when both directions are done.
func pipe(a, b net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, copyBuf)
		_, err := io.CopyBuffer(dst, src, buf)
		if cw, ok := dst.(closeWriter); ok && err == nil {
			cw.CloseWrite()
		} else {
			// yamux streams: Close sends FIN (half-close); on error, tear down.
			dst.Close()
			if err != nil {
				src.Close()
			}
		}
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}

type server struct {
	mu   sync.Mutex
	sess *yamux.Session
}

func (s *server) current() *yamux.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sess
}

func runServer(args []string) error {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	control := fs.String("control", "127.0.0.1:7000", "address the client carrier connects to")
	var publics addrList
	fs.Var(&publics, "public", "public address for visitors (repeatable)")
	window := fs.Uint("window", 256*1024, "yamux MaxStreamWindowSize in bytes")
	fs.Parse(args)
	if len(publics) == 0 {
		return errors.New("at least one --public is required")
	}
	cl, err := net.Listen("tcp", *control)
	if err != nil {
		return err
	}
	srv := &server{}
	for i, p := range publics {
		pl, err := net.Listen("tcp", p)
		if err != nil {
			return err
		}
		fmt.Printf("public %d %s\n", i, pl.Addr())
		go srv.servePublic(pl, byte(i))
	}
	fmt.Printf("control %s\n", cl.Addr())
	for {
		c, err := cl.Accept()
		if err != nil {
			return err
		}
		sess, err := yamux.Server(c, yamuxConfig(*window))
		if err != nil {
			c.Close()
			continue
		}
		srv.mu.Lock()
		old := srv.sess
		srv.sess = sess
		srv.mu.Unlock()
		if old != nil {
			old.Close()
		}
		fmt.Printf("client %s\n", c.RemoteAddr())
	}
}

func (s *server) servePublic(l net.Listener, index byte) {
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			sess := s.current()
			if sess == nil {
				c.Close()
				return
			}
			st, err := sess.OpenStream()
			if err != nil {
				c.Close()
				return
			}
			if _, err := st.Write([]byte{index}); err != nil {
				st.Close()
				c.Close()
				return
			}
			pipe(c, st)
		}()
	}
}

func runClient(args []string) error {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	serverAddr := fs.String("server", "127.0.0.1:7000", "server control address")
	var targets addrList
	fs.Var(&targets, "target", "local service address (repeatable, same order as --public)")
	window := fs.Uint("window", 256*1024, "yamux MaxStreamWindowSize in bytes")
	fs.Parse(args)
	if len(targets) == 0 {
		return errors.New("at least one --target is required")
	}
	c, err := net.DialTimeout("tcp", *serverAddr, 10*time.Second)
	if err != nil {
		return err
	}
	sess, err := yamux.Client(c, yamuxConfig(*window))
	if err != nil {
		return err
	}
	fmt.Printf("connected %s\n", c.RemoteAddr())
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return err
		}
		go func() {
			var idx [1]byte
			if _, err := io.ReadFull(st, idx[:]); err != nil || int(idx[0]) >= len(targets) {
				st.Close()
				return
			}
			t, err := net.Dial("tcp", targets[idx[0]])
			if err != nil {
				st.Close()
				return
			}
			pipe(t, st)
		}()
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gotunnel server|client [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = runServer(os.Args[2:])
	case "client":
		err = runClient(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gotunnel:", err)
		os.Exit(1)
	}
}
