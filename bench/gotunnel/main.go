// SPDX-FileCopyrightText: 2026 trio-bridge contributors
// SPDX-License-Identifier: MPL-2.0

// Command gotunnel is the Go reference tunnel of `python -m bench tunnel`: the same shape
// as bridge-relay and bridge-agent, on hashicorp/yamux over TLS, in two processes.
//
//	gotunnel relay -cert-out FILE -forward HOST:PORT [-forward ...]
//	gotunnel agent -relay HOST:PORT -ca FILE
//	gotunnel hop -cert-out FILE -relay HOST:PORT -ca FILE
//
// The relay makes a self-signed certificate (ECDSA P-256, for 127.0.0.1), writes it to
// -cert-out, listens for one agent on 127.0.0.1 and, per -forward, on a local port. A
// connection to a local port opens a yamux stream to the agent, whose first bytes name the
// target (one length byte, then HOST:PORT); the relay sends the client's bytes right behind
// them without waiting for an answer. The agent verifies the relay's certificate against
// -ca, accepts streams, dials each target and copies both ways; a target it cannot reach
// closes the stream. Both copy directions half-close. Default yamux settings (its log
// discarded), Go's default TLS settings.
//
// The relay prints "agents: listening on HOST:PORT" and one "forward HOST:PORT: listening
// on HOST:PORT" line per forward, and "agent connected" once the agent's session is up; the
// agent prints "agent: connected". Each runs until killed.
//
// hop is the peer hop of a two-node cluster, the reference for the relay's peered path: it
// listens for one agent as the relay does (its own certificate, written to -cert-out), and
// once the agent is connected dials the relay given by -relay as if it were that agent. Each
// stream the relay opens is copied, both ways, to a stream it opens to the agent, the target's
// header included: one more TLS connection and one more yamux session per direction, as a
// relay node holding the agent's session does for a node that holds the caller. It prints
// "agents: listening on HOST:PORT", "agent connected", then "hop: connected".
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

const host = "127.0.0.1"

type forwards []string

func (f *forwards) String() string     { return strings.Join(*f, ",") }
func (f *forwards) Set(v string) error { *f = append(*f, v); return nil }

func die(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "gotunnel: "+format+"\n", args...)
	os.Exit(1)
}

func muxConfig() *yamux.Config {
	config := yamux.DefaultConfig()
	config.LogOutput = io.Discard
	return config
}

// pipe copies both ways between a client connection and a stream, half-closing each
// direction at its EOF, and closes both once both directions are done.
func pipe(conn *net.TCPConn, stream *yamux.Stream) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(stream, conn)
		stream.Close() // yamux: FIN, the read side stays open
	}()
	io.Copy(conn, stream)
	conn.CloseWrite()
	wg.Wait()
	conn.Close()
	stream.Close()
}

// splice copies both ways between two streams, closing each one's sending side at the
// other's EOF, and returns once both directions are done.
func splice(a, b *yamux.Stream) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		io.Copy(b, a)
		b.Close()
	}()
	io.Copy(a, b)
	a.Close()
	wg.Wait()
}

func selfSigned() (tls.Certificate, []byte) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		die("key: %v", err)
	}
	template := x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP(host)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		die("certificate: %v", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func relay(args []string) {
	flags := flag.NewFlagSet("relay", flag.ExitOnError)
	certOut := flags.String("cert-out", "", "where to write the relay's certificate (PEM)")
	var targets forwards
	flags.Var(&targets, "forward", "HOST:PORT to forward a local port to (repeatable)")
	flags.Parse(args)
	agents := listenForAgent(*certOut)
	var current *yamux.Session
	var ready sync.WaitGroup
	ready.Add(1)
	go func() {
		current = acceptAgent(agents)
		ready.Done()
	}()
	for _, target := range targets {
		listener, err := net.Listen("tcp", host+":0")
		if err != nil {
			die("%v", err)
		}
		fmt.Printf("forward %s: listening on %s\n", target, listener.Addr())
		header := append([]byte{byte(len(target))}, target...)
		go func() {
			ready.Wait()
			for {
				conn, err := listener.Accept()
				if err != nil {
					time.Sleep(10 * time.Millisecond) // out of descriptors: the backlog waits
					continue
				}
				go func() {
					stream, err := current.OpenStream()
					if err != nil {
						conn.Close()
						return
					}
					if _, err := stream.Write(header); err != nil {
						conn.Close()
						stream.Close()
						return
					}
					pipe(conn.(*net.TCPConn), stream)
				}()
			}
		}()
	}
	ready.Wait()
	<-current.CloseChan()
	die("the agent's session ended")
}

// listenForAgent writes a fresh self-signed certificate to certOut and listens with it for
// the agent, printing the address.
func listenForAgent(certOut string) net.Listener {
	cert, certPEM := selfSigned()
	if err := os.WriteFile(certOut, certPEM, 0o644); err != nil {
		die("%v", err)
	}
	agents, err := tls.Listen("tcp", host+":0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		die("%v", err)
	}
	fmt.Printf("agents: listening on %s\n", agents.Addr())
	return agents
}

// acceptAgent returns the yamux session of the first agent to connect to agents.
func acceptAgent(agents net.Listener) *yamux.Session {
	conn, err := agents.Accept()
	if err != nil {
		die("%v", err)
	}
	session, err := yamux.Client(conn, muxConfig())
	if err != nil {
		die("%v", err)
	}
	fmt.Println("agent connected")
	return session
}

// dialRelay connects to the relay at address as its agent, verifying the relay's
// certificate against the one in caFile.
func dialRelay(address, caFile string) *yamux.Session {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		die("%v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		die("no certificate in %s", caFile)
	}
	conn, err := tls.Dial("tcp", address, &tls.Config{RootCAs: roots, ServerName: host})
	if err != nil {
		die("%v", err)
	}
	session, err := yamux.Server(conn, muxConfig())
	if err != nil {
		die("%v", err)
	}
	return session
}

func hop(args []string) {
	flags := flag.NewFlagSet("hop", flag.ExitOnError)
	certOut := flags.String("cert-out", "", "where to write the hop's certificate (PEM)")
	address := flags.String("relay", "", "HOST:PORT of the relay that holds the callers")
	caFile := flags.String("ca", "", "that relay's certificate (PEM)")
	flags.Parse(args)
	agentSession := acceptAgent(listenForAgent(*certOut))
	relaySession := dialRelay(*address, *caFile)
	fmt.Println("hop: connected")
	go func() {
		<-agentSession.CloseChan()
		die("the agent's session ended")
	}()
	for {
		stream, err := relaySession.AcceptStream()
		if err != nil {
			die("the relay's session ended: %v", err)
		}
		go func() {
			onward, err := agentSession.OpenStream()
			if err != nil {
				stream.Close()
				return
			}
			splice(stream, onward)
		}()
	}
}

func agent(args []string) {
	flags := flag.NewFlagSet("agent", flag.ExitOnError)
	address := flags.String("relay", "", "HOST:PORT of the relay")
	caFile := flags.String("ca", "", "the relay's certificate (PEM)")
	flags.Parse(args)
	session := dialRelay(*address, *caFile)
	fmt.Println("agent: connected")
	for {
		stream, err := session.AcceptStream()
		if err != nil {
			die("the relay's session ended: %v", err)
		}
		go func() {
			var size [1]byte
			if _, err := io.ReadFull(stream, size[:]); err != nil {
				stream.Close()
				return
			}
			target := make([]byte, size[0])
			if _, err := io.ReadFull(stream, target); err != nil {
				stream.Close()
				return
			}
			conn, err := net.Dial("tcp", string(target))
			if err != nil {
				stream.Close()
				return
			}
			pipe(conn.(*net.TCPConn), stream)
		}()
	}
}

func main() {
	if len(os.Args) < 2 {
		die("usage: gotunnel relay|agent|hop [flags]")
	}
	switch os.Args[1] {
	case "relay":
		relay(os.Args[2:])
	case "agent":
		agent(os.Args[2:])
	case "hop":
		hop(os.Args[2:])
	default:
		die("unknown command %q", os.Args[1])
	}
}
