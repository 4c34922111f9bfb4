// Command example takes a Stormlock lock over mutual TLS, prints its fence,
// and releases it: the Go stubs in use.
//
//	go run ./example -addr 127.0.0.1:7466 -resource demo/lock
//
// Without -ca/-cert/-key it uses the development certificates that a local
// stormlockd creates in its data directory ($STORMLOCK_DATA_DIR, else
// $XDG_STATE_HOME/stormlock, else ~/.local/state/stormlock).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	stormlockv1 "stormlock/clients/go/stormlockv1"
)

func main() {
	tlsDir := filepath.Join(dataDir(), "tls")
	addr := flag.String("addr", "127.0.0.1:7466", "daemon address host:port")
	caFile := flag.String("ca", filepath.Join(tlsDir, "ca.crt"), "CA certificate (PEM)")
	certFile := flag.String("cert", filepath.Join(tlsDir, "client.crt"), "client certificate (PEM)")
	keyFile := flag.String("key", filepath.Join(tlsDir, "client.key"), "client key (PEM)")
	serverName := flag.String("server-name", "localhost", "name in the daemon's certificate")
	resource := flag.String("resource", "demo/go-example", "resource to lock")
	flag.Parse()

	creds, err := mutualTLS(*caFile, *certFile, *keyFile, *serverName)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.Dial(*addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	locks := stormlockv1.NewLockServiceClient(conn)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	answer, err := locks.Acquire(ctx, &stormlockv1.AcquireRequest{
		Resource: *resource,
		Ttl:      durationpb.New(time.Minute),
		Reason:   "Go example",
	})
	if err != nil {
		log.Fatal(err)
	}
	if !answer.GetAcquired() {
		h := answer.GetHolder()
		fmt.Printf("held by %s since %s: %s\n", h.GetPrincipal(), h.GetAcquiredAt().AsTime(), h.GetReason())
		os.Exit(2)
	}
	lease := answer.GetLease()
	fmt.Printf("acquired %s, fence %d\n", lease.GetResource(), lease.GetFence())
	if _, err := locks.Release(ctx, &stormlockv1.ReleaseRequest{Resource: lease.GetResource(), LeaseId: lease.GetLeaseId()}); err != nil {
		log.Fatal(err)
	}
}

func mutualTLS(caFile, certFile, keyFile, serverName string) (credentials.TransportCredentials, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(&tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS12,
	}), nil
}

func dataDir() string {
	if d := os.Getenv("STORMLOCK_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "stormlock")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "state", "stormlock")
}
