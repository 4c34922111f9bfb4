package details

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	return dial(t, addr, dataDir)
}

// dial connects to the daemon at addr over mutual TLS with the development
// certificates in its data directory.
func dial(t *testing.T, addr, dataDir string) stormlockv1.LockServiceClient {
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

// startDaemon starts a daemon of the test's own with the configuration file
// config (TOML), on a free loopback port with its own data directory, and
// connects to it; the daemon is the binary STORMLOCK_TEST_DAEMON (check.sh
// sets it) and stops at the end of the test, which is skipped without it.
func startDaemon(t *testing.T, config string) stormlockv1.LockServiceClient {
	binary := os.Getenv("STORMLOCK_TEST_DAEMON")
	if binary == "" {
		t.Skip("no daemon binary: set STORMLOCK_TEST_DAEMON (check.sh does)")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stormlockd.toml"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	listener.Close()
	logPath := filepath.Join(dir, "stormlockd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "--config", filepath.Join(dir, "stormlockd.toml"),
		"--listen", addr, "--data-dir", filepath.Join(dir, "data"))
	// The daemon must not pick up the caller's configuration.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STORMLOCK_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	logText := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(logText(), "listening"); {
		select {
		case <-exited:
			t.Fatalf("stormlockd exited:\n%s", logText())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stormlockd not ready after 60s:\n%s", logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return dial(t, addr, filepath.Join(dir, "data"))
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
		if w := Window(err); w != nil {
			t.Errorf("%s: Window = %v, want nil", call, w)
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
		if w := Window(err); w != nil {
			t.Errorf("Renew of the %s lease: Window = %v, want nil", name, w)
		}
	}
}

// soonLead is the time from writing the configuration of TestLiveWindows to
// the start of its soon-freeze: for the daemon to start and a lease to be
// taken before it (a lease is refused from one second before the start).
const soonLead = 5 * time.Second

func TestLiveWindows(t *testing.T) {
	// Two windows that exempt nobody (the development client is refused like
	// anyone): one in force since a minute ago, one that starts soon.
	now := time.Now().UTC().Truncate(time.Second)
	locks := startDaemon(t, fmt.Sprintf(`
[[freezes]]
name = "release-freeze"
match = ["frozen/**"]
start = %q
duration = "1h"
reason = "release week"

[[freezes]]
name = "soon-freeze"
match = ["soon/**"]
start = %q
duration = "1h"
reason = "starting soon"
`, now.Add(-time.Minute).Format(time.RFC3339), now.Add(soonLead).Format(time.RFC3339)))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("AcquireAnswersWithTheWindow", func(t *testing.T) {
		answer, err := locks.Acquire(ctx, &stormlockv1.AcquireRequest{Resource: "frozen/x", Ttl: durationpb.New(10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if answer.GetAcquired() || answer.GetLease() != nil || answer.GetHolder() != nil {
			t.Fatalf("Acquire of frozen/x = %v, want refused with no lease and no holder", answer)
		}
		w := answer.GetWindow()
		if w.GetKind() != stormlockv1.Window_KIND_FREEZE || w.GetName() != "release-freeze" || w.GetReason() != "release week" {
			t.Errorf("AcquireResponse.Window = %v, want freeze release-freeze, reason %q", w, "release week")
		}
		starts, ends := w.GetStartsAt().AsTime(), w.GetEndsAt().AsTime()
		if !starts.Equal(now.Add(-time.Minute)) || ends.Sub(starts) != time.Hour {
			t.Errorf("window from %s until %s, want from %s for 1h", starts, ends, now.Add(-time.Minute))
		}
	})

	t.Run("RenewIsRefusedWithTheWindow", func(t *testing.T) {
		answer, err := locks.Acquire(ctx, &stormlockv1.AcquireRequest{Resource: "soon/x", Ttl: durationpb.New(10 * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
		if !answer.GetAcquired() {
			t.Fatalf("soon/x refused (did the daemon start too slowly for soon-freeze?): %v", answer)
		}
		cut := answer.GetCutShortBy()
		if cut.GetKind() != stormlockv1.Window_KIND_FREEZE || cut.GetName() != "soon-freeze" {
			t.Fatalf("CutShortBy = %v, want freeze soon-freeze", cut)
		}
		start := cut.GetStartsAt().AsTime()
		if expires := answer.GetLease().GetExpiresAt().AsTime(); expires.After(start) {
			t.Errorf("lease expires at %s, after the start %s", expires, start)
		}

		// Until the daemon says the window is in force (bounded by ctx).
		for {
			current, err := locks.Current(ctx, &stormlockv1.CurrentRequest{Resource: "soon/x"})
			if err != nil {
				t.Fatalf("Current (soon-freeze from %s): %v", start, err)
			}
			if current.GetWindow() != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		// With a TTL: the daemon weighs the window before the lease, which
		// ended at the start (without one it would look up the lease's own
		// TTL first, and answer that the lease is not current).
		_, err = locks.Renew(ctx, &stormlockv1.RenewRequest{
			Resource: "soon/x", LeaseId: answer.GetLease().GetLeaseId(), Ttl: durationpb.New(time.Minute),
		})
		notCurrent(t, "Renew", err)
		wrapped := fmt.Errorf("renew soon/x: %w", err)
		w := Window(wrapped)
		if w.GetKind() != stormlockv1.Window_KIND_FREEZE || w.GetName() != "soon-freeze" || w.GetReason() != "starting soon" {
			t.Fatalf("Window(%v) = %v, want freeze soon-freeze, reason %q", err, w, "starting soon")
		}
		if !w.GetStartsAt().AsTime().Equal(start) || !w.GetEndsAt().AsTime().Equal(start.Add(time.Hour)) {
			t.Errorf("window from %s until %s, want from %s for 1h", w.GetStartsAt().AsTime(), w.GetEndsAt().AsTime(), start)
		}
		if evicted := LeaseEvicted(err); evicted != nil {
			t.Errorf("LeaseEvicted(%v) = %v, want nil", err, evicted)
		}
	})
}
