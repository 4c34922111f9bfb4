package details

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	stormlockv1 "stormlock/clients/go/stormlockv1"
)

// daemon connects to the stormlockd that check.sh starts, named by
// STORMLOCK_TEST_ADDR (host:port) and STORMLOCK_DATA_DIR (its data
// directory, whose development client certificate is an administrator's),
// and skips the test without them.
func daemon(t *testing.T) stormlockv1.LockServiceClient {
	addr, dataDir := os.Getenv("STORMLOCK_TEST_ADDR"), os.Getenv("STORMLOCK_DATA_DIR")
	if addr == "" || dataDir == "" {
		t.Skip("no daemon: set STORMLOCK_TEST_ADDR and STORMLOCK_DATA_DIR (check.sh does)")
	}
	tlsDir := filepath.Join(dataDir, "tls")
	caPEM, err := os.ReadFile(filepath.Join(tlsDir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("no certificate in ca.crt")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(tlsDir, "client.crt"), filepath.Join(tlsDir, "client.key"))
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		ServerName:   "localhost",
		MinVersion:   tls.VersionTLS12,
	})
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return stormlockv1.NewLockServiceClient(conn)
}

// fresh returns a resource name no other test uses.
func fresh(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "go-tests/" + hex.EncodeToString(b)
}

func acquire(ctx context.Context, t *testing.T, locks stormlockv1.LockServiceClient, resource string, ttl time.Duration) *stormlockv1.Lease {
	answer, err := locks.Acquire(ctx, &stormlockv1.AcquireRequest{Resource: resource, Ttl: durationpb.New(ttl), Reason: "go tests"})
	if err != nil {
		t.Fatal(err)
	}
	if !answer.GetAcquired() {
		t.Fatalf("%s is held by %s", resource, answer.GetHolder().GetPrincipal())
	}
	return answer.GetLease()
}

// notCurrent asserts that err is FAILED_PRECONDITION.
func notCurrent(t *testing.T, call string, err error) {
	t.Helper()
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("%s: got %v, want FAILED_PRECONDITION", call, err)
	}
}

func TestLiveBrokenLeaseSaysWhoBrokeIt(t *testing.T) {
	locks := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resource := fresh(t)
	lease := acquire(ctx, t, locks, resource, time.Minute)
	broken, err := locks.ForceRelease(ctx, &stormlockv1.ForceReleaseRequest{Resource: resource, Reason: "incident 42"})
	if err != nil {
		t.Fatal(err)
	}
	if broken.GetReleased().GetLeaseId() != lease.GetLeaseId() {
		t.Fatalf("ForceRelease broke %v, want lease %s", broken.GetReleased(), lease.GetLeaseId())
	}

	_, renewErr := locks.Renew(ctx, &stormlockv1.RenewRequest{Resource: resource, LeaseId: lease.GetLeaseId()})
	_, isHeldErr := locks.IsHeld(ctx, &stormlockv1.IsHeldRequest{Resource: resource, LeaseId: lease.GetLeaseId()})
	for call, err := range map[string]error{"Renew": renewErr, "IsHeld": isHeldErr} {
		notCurrent(t, call, err)
		evicted := LeaseEvicted(err)
		// The development client certificate is the administrator's.
		if evicted.GetActor() != lease.GetPrincipal() || evicted.GetReason() != "incident 42" {
			t.Errorf("%s: LeaseEvicted = %v, want actor %q, reason %q", call, evicted, lease.GetPrincipal(), "incident 42")
		}
	}
}

func TestLiveExpiredOrReleasedLeaseHasNoEviction(t *testing.T) {
	locks := daemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resource := fresh(t)
	expired := acquire(ctx, t, locks, resource, time.Second)
	time.Sleep(2200 * time.Millisecond)
	released := acquire(ctx, t, locks, resource, time.Minute)
	if _, err := locks.Release(ctx, &stormlockv1.ReleaseRequest{Resource: resource, LeaseId: released.GetLeaseId()}); err != nil {
		t.Fatal(err)
	}
	for name, lease := range map[string]*stormlockv1.Lease{"expired": expired, "released": released} {
		_, err := locks.Renew(ctx, &stormlockv1.RenewRequest{Resource: resource, LeaseId: lease.GetLeaseId()})
		notCurrent(t, "Renew of the "+name+" lease", err)
		if evicted := LeaseEvicted(err); evicted != nil {
			t.Errorf("Renew of the %s lease: LeaseEvicted = %v, want nil", name, evicted)
		}
	}
}
