package redispool_test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/redispool/redispool"
	"github.com/redispool/redispool/internal/redistest"
)

// startStaleSentinel starts a fake sentinel that names master to SENTINEL
// get-master-addr-by-name, confirms SUBSCRIBE and answers PING, as a
// sentinel that has not heard of a failover yet would. It returns its
// address.
func startStaleSentinel(t *testing.T, master string) string {
	return startAnsweringSentinel(t, master).addr
}

// gatedDial is a dial option whose first dial waits for proceed to be
// closed, after closing started.
func gatedDial() (opt redis.DialOption, started <-chan struct{}, proceed chan<- struct{}) {
	start, goOn := make(chan struct{}), make(chan struct{})
	var once sync.Once
	opt = redis.DialContextFunc(func(ctx context.Context, network, addr string) (net.Conn, error) {
		once.Do(func() {
			close(start)
			<-goOn
		})
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
	return opt, start, goOn
}

// announceSwitch tells p's Sentinel, as the sentinels would, that the master
// moved from oldAddr to newAddr.
func announceSwitch(p *redispool.Pool, oldAddr, newAddr string) {
	oldHost, oldPort, _ := net.SplitHostPort(oldAddr)
	newHost, newPort, _ := net.SplitHostPort(newAddr)
	p.Sentinel.Announce("test", fmt.Sprintf("mymaster %s %s %s %s", oldHost, oldPort, newHost, newPort))
}

func TestAConnDialedAsANewMasterIsAnnouncedServesTheNewMaster(t *testing.T) {
	oldMaster := redistest.Start(t)
	newMaster := redistest.Start(t)
	sentinel := startStaleSentinel(t, oldMaster.Addr()) // has not heard of the failover

	// The first query to the sentinels waits until the test has announced
	// the new master: the dial began before the announcement and reads the
	// master's address after it.
	dial, querying, proceed := gatedDial()
	p := &redispool.Pool{
		Sentinel: &redispool.Sentinel{
			Addrs:       []string{sentinel},
			MasterName:  "mymaster",
			DialOptions: []redis.DialOption{dial},
		},
		DialTimeout: 5 * time.Second,
	}
	defer p.Close()

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	<-querying
	announceSwitch(p, oldMaster.Addr(), newMaster.Addr())
	close(proceed)

	c := <-got
	defer c.Close()
	require.NoError(t, c.Err())
	_, err := c.Do("SET", "k", "v")
	require.NoError(t, err, "a conn to the master announced before its address was read must not be retired")
	v, err := redis.String(newMaster.Do(t, "GET", "k"), nil)
	require.NoError(t, err)
	assert.Equal(t, "v", v, "the write reached the new master")
	assert.EqualValues(t, 1, p.Stats().DialCount, "no dial wasted")
}

func TestAConnToTheOldMasterDialedAsANewMasterIsAnnouncedIsRetired(t *testing.T) {
	oldMaster := redistest.Start(t)
	newMaster := redistest.Start(t)
	sentinel := startStaleSentinel(t, oldMaster.Addr())

	// The dial to the master the sentinel named waits until the test has
	// announced another: the address was read before the announcement.
	dial, dialing, proceed := gatedDial()
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{sentinel}, MasterName: "mymaster"},
		DialOptions: []redis.DialOption{dial},
	}
	defer p.Close()

	got := make(chan redis.Conn, 1)
	go func() { got <- p.Get() }()
	<-dialing
	announceSwitch(p, oldMaster.Addr(), newMaster.Addr())
	close(proceed)

	c := <-got
	defer c.Close()
	require.ErrorIs(t, c.Err(), redispool.ErrConnRetired, "Err tells of a retired conn before any command fails")
	_, err := c.Do("SET", "k", "v")
	require.ErrorIs(t, err, redispool.ErrConnRetired, "a conn to the old master must not write")
	n, err := redis.Int(oldMaster.Do(t, "EXISTS", "k"), nil)
	require.NoError(t, err)
	assert.Zero(t, n, "nothing was written to the old master")
}

// TestDialTimeoutBoundsTheRoleCheck checks that the ROLE a pool sends to
// the master a sentinel names is bounded by DialTimeout, not by ReadTimeout,
// which may be disabled: a master that accepts and never answers must not
// hold Get.
func TestDialTimeoutBoundsTheRoleCheck(t *testing.T) {
	master := silentServer(t)
	sentinel := startStaleSentinel(t, master)
	p := &redispool.Pool{
		Sentinel:    &redispool.Sentinel{Addrs: []string{sentinel}, MasterName: "mymaster"},
		DialTimeout: 300 * time.Millisecond,
		ReadTimeout: -1,
	}
	defer p.Close()
	r := awaitGet(t, goGet(p, context.Background()), 5*time.Second) // a master that does not answer ROLE, with DialTimeout 300ms
	r.close()
	err := r.err
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ROLE")
}
