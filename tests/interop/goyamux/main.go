// SPDX-FileCopyrightText: 2026 trio-bridge contributors
// SPDX-License-Identifier: MPL-2.0

// Command goyamux is a hashicorp/yamux peer driven by command-line flags.
//
// It dials -addr, runs a yamux session in -role and plays -scenario, reporting
// what it observes on stdout, one fact per line. Every scenario but "hold" and
// "gated" serves the streams the other side opens at once: the first line of
// such a stream is a command (echo, sink, reset, late, goaway). The program
// exits once the other side has closed the session: 0 when nothing failed, 1
// otherwise.
package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
)

var failed int32

// release is closed when the "gated" scenario's gate says "close".
var release = make(chan struct{})

func report(format string, args ...interface{}) {
	fmt.Printf(format+"\n", args...)
}

func fail(format string, args ...interface{}) {
	atomic.StoreInt32(&failed, 1)
	report("fail: "+format, args...)
}

// frameConn tracks frame boundaries in what yamux writes, so that a frame the
// library has no API for (RST) can be slipped in between two of its frames.
type frameConn struct {
	net.Conn
	mu     sync.Mutex
	idle   *sync.Cond
	header []byte // part of an outgoing header written so far
	body   uint32 // outgoing Data payload bytes still to come
}

func newFrameConn(c net.Conn) *frameConn {
	fc := &frameConn{Conn: c}
	fc.idle = sync.NewCond(&fc.mu)
	return fc
}

func (c *frameConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(p)
	for rest := p[:n]; len(rest) > 0; {
		if c.body > 0 {
			k := uint32(len(rest))
			if k > c.body {
				k = c.body
			}
			c.body -= k
			rest = rest[k:]
			continue
		}
		k := 12 - len(c.header)
		if k > len(rest) {
			k = len(rest)
		}
		c.header = append(c.header, rest[:k]...)
		rest = rest[k:]
		if len(c.header) == 12 {
			if c.header[1] == 0 { // Data
				c.body = binary.BigEndian.Uint32(c.header[8:])
			}
			c.header = c.header[:0]
		}
	}
	if len(c.header) == 0 && c.body == 0 {
		c.idle.Broadcast()
	}
	return n, err
}

// inject writes a whole frame at the next frame boundary.
func (c *frameConn) inject(frame []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.header) > 0 || c.body > 0 {
		c.idle.Wait()
	}
	_, err := c.Conn.Write(frame)
	return err
}

func pattern(seed int64, size int) []byte {
	b := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

// readLine reads one byte at a time so that nothing after the line is consumed.
func readLine(r io.Reader) (string, error) {
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(r, b); err != nil {
			return string(line), err
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
}

func expectLine(r io.Reader, want string) error {
	line, err := readLine(r)
	if err != nil {
		return fmt.Errorf("reading %q: %v", want, err)
	}
	if line != want {
		return fmt.Errorf("got line %q, want %q", line, want)
	}
	return nil
}

// echoCheck writes payload, reads the same bytes back and closes the stream.
// This yamux version ends Read once the stream is closed locally, so the whole
// reply is read before Close.
func echoCheck(s *yamux.Stream, payload []byte) error {
	defer s.Close()
	written := make(chan error, 1)
	go func() {
		_, err := s.Write(payload)
		written <- err
	}()
	got := make([]byte, len(payload))
	if _, err := io.ReadFull(s, got); err != nil {
		return fmt.Errorf("stream %d: read: %v", s.StreamID(), err)
	}
	if err := <-written; err != nil {
		return fmt.Errorf("stream %d: write: %v", s.StreamID(), err)
	}
	if !bytes.Equal(got, payload) {
		return fmt.Errorf("stream %d: echo differs", s.StreamID())
	}
	return nil
}

func serve(sess *yamux.Session) {
	for {
		s, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			if err := handle(sess, s); err != nil {
				fail("stream %d: %v", s.StreamID(), err)
			}
		}()
	}
}

func handle(sess *yamux.Session, s *yamux.Stream) error {
	r := bufio.NewReader(s)
	command, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading command: %v", err)
	}
	switch strings.TrimSuffix(command, "\n") {
	case "echo": // copy until EOF, then close
		if _, err := io.Copy(s, r); err != nil {
			return err
		}
		return s.Close()
	case "sink": // hash until EOF, report and send back the digest, close
		h := sha256.New()
		n, err := io.Copy(h, r)
		if err != nil {
			return err
		}
		sum := hex.EncodeToString(h.Sum(nil))
		report("sha256 %s %d", sum, n)
		if _, err := io.WriteString(s, sum); err != nil {
			return err
		}
		return s.Close()
	case "reset": // say ready, then report how reads and writes fail
		if _, err := io.WriteString(s, "ready\n"); err != nil {
			return err
		}
		if _, err := r.Read(make([]byte, 1)); err != nil {
			report("read: %v", err)
		} else {
			return fmt.Errorf("read data where a reset was expected")
		}
		_, err = s.Write([]byte("x"))
		report("write: %v", err)
		return nil
	case "late": // reply at once; end the stream only once released
		if _, err := io.WriteString(s, "hello\n"); err != nil {
			return err
		}
		<-release
		return s.Close()
	case "goaway": // send GoAway, then echo like "echo"
		if err := sess.GoAway(); err != nil {
			return err
		}
		if _, err := io.WriteString(s, "gone\n"); err != nil {
			return err
		}
		if _, err := io.Copy(s, r); err != nil {
			return err
		}
		return s.Close()
	}
	return fmt.Errorf("unknown command %q", command)
}

// openStreams opens n streams, then echo-checks all of them at once against
// the other side.
func openStreams(sess *yamux.Session, n, size int) error {
	streams := make([]*yamux.Stream, n)
	for i := range streams {
		s, err := sess.OpenStream()
		if err != nil {
			return err
		}
		streams[i] = s
	}
	errs := make(chan error, n)
	for i, s := range streams {
		go func(i int, s *yamux.Stream) {
			errs <- echoCheck(s, pattern(int64(i), size))
		}(i, s)
	}
	for range streams {
		if err := <-errs; err != nil {
			return err
		}
	}
	report("ok %d", n)
	return nil
}

// source sends size bytes on a new stream and closes it (FIN), then waits for
// the 64-character hex digest the other side sends back after the FIN.
func source(sess *yamux.Session, size int) error {
	s, err := sess.OpenStream()
	if err != nil {
		return err
	}
	h := sha256.New()
	rng := rand.New(rand.NewSource(1))
	chunk := make([]byte, 1<<20)
	for left := size; left > 0; left -= len(chunk) {
		if left < len(chunk) {
			chunk = chunk[:left]
		}
		rng.Read(chunk)
		h.Write(chunk)
		if _, err := s.Write(chunk); err != nil {
			return err
		}
	}
	report("sha256 %x", h.Sum(nil))
	if err := s.Close(); err != nil {
		return err
	}
	// Once closed locally, this yamux version's Read returns EOF whenever the
	// buffer is empty, so the reply is polled for.
	reply := make([]byte, 64)
	for got := 0; got < len(reply); {
		n, err := s.Read(reply[got:])
		got += n
		if err == io.EOF {
			time.Sleep(time.Millisecond)
		} else if err != nil {
			return err
		}
	}
	report("reply %s", reply)
	return nil
}

// resetStream opens a stream, waits for "ready", sends a line and resets the
// stream, then shows the session still works with a second echo-checked stream.
func resetStream(sess *yamux.Session, conn *frameConn) error {
	s, err := sess.OpenStream()
	if err != nil {
		return err
	}
	if err := expectLine(s, "ready"); err != nil {
		return err
	}
	if _, err := io.WriteString(s, "doomed\n"); err != nil {
		return err
	}
	rst := make([]byte, 12)
	rst[1] = 1                             // WindowUpdate
	binary.BigEndian.PutUint16(rst[2:], 8) // RST
	binary.BigEndian.PutUint32(rst[4:], s.StreamID())
	if err := conn.inject(rst); err != nil {
		return err
	}
	report("reset %d", s.StreamID())
	second, err := sess.OpenStream()
	if err != nil {
		return err
	}
	if err := echoCheck(second, pattern(2, 1000)); err != nil {
		return err
	}
	report("ok")
	return nil
}

// openAfterGoAway opens a stream and, once the other side wrote "went away"
// on it, reports how opening another stream fails; the first stream then
// still carries "alive" and is closed.
func openAfterGoAway(sess *yamux.Session) error {
	s, err := sess.OpenStream()
	if err != nil {
		return err
	}
	if err := expectLine(s, "went away"); err != nil {
		return err
	}
	_, err = sess.OpenStream()
	report("open: %v", err)
	if _, err := io.WriteString(s, "alive\n"); err != nil {
		return err
	}
	return s.Close()
}

// gated accepts one stream, the gate, and no other stream until the gate says
// "open"; when it then says "close", the "late" streams are released.
func gated(sess *yamux.Session) error {
	gate, err := sess.AcceptStream()
	if err != nil {
		return err
	}
	if err := expectLine(gate, "open"); err != nil {
		return err
	}
	go serve(sess)
	if err := expectLine(gate, "close"); err != nil {
		return err
	}
	close(release)
	return nil
}

func ping(sess *yamux.Session, count int) error {
	for i := 0; i < count; i++ {
		if _, err := sess.Ping(); err != nil {
			return err
		}
		report("ping ok")
	}
	return nil
}

func main() {
	addr := flag.String("addr", "", "address to dial")
	role := flag.String("role", "server", "yamux role: client or server")
	scenario := flag.String("scenario", "serve",
		"serve, open, source, ping, reset, goaway, gated or hold (never accept)")
	streams := flag.Int("streams", 1, "streams to open (open)")
	size := flag.Int("size", 1024, "payload bytes (open: per stream; source)")
	backlog := flag.Int("backlog", 256, "AcceptBacklog")
	window := flag.Uint("window", 256*1024, "MaxStreamWindowSize")
	flag.Parse()

	tcp, err := net.Dial("tcp", *addr)
	if err != nil {
		fail("dial: %v", err)
		os.Exit(1)
	}
	conn := newFrameConn(tcp)
	config := yamux.DefaultConfig()
	config.AcceptBacklog = *backlog
	config.MaxStreamWindowSize = uint32(*window)
	var sess *yamux.Session
	switch *role {
	case "client":
		sess, err = yamux.Client(conn, config)
	case "server":
		sess, err = yamux.Server(conn, config)
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fail("session: %v", err)
		os.Exit(1)
	}

	if *scenario != "hold" && *scenario != "gated" {
		go serve(sess)
	}
	switch *scenario {
	case "serve", "hold":
	case "open":
		err = openStreams(sess, *streams, *size)
	case "source":
		err = source(sess, *size)
	case "ping":
		err = ping(sess, 3)
	case "reset":
		err = resetStream(sess, conn)
	case "goaway":
		err = openAfterGoAway(sess)
	case "gated":
		err = gated(sess)
	default:
		err = fmt.Errorf("unknown scenario")
	}
	if err != nil {
		fail("%s: %v", *scenario, err)
		os.Exit(1)
	}
	<-sess.CloseChan()
	if *scenario == "hold" {
		report("closed")
	}
	os.Exit(int(atomic.LoadInt32(&failed)))
}
