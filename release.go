package redispool

// verdict is what Close decides for a connection given back: keep it
// (reason -1) or discard it for reason, cause going to the log; err is
// Close's own error.
type verdict struct {
	reason DiscardReason
	cause  error
	err    error
}

// keep is the verdict on a clean connection.
var keep = verdict{reason: -1}

// release decides the fate of a connection given back by a borrower whose
// final bookkeeping is st (when touched; otherwise the borrower left it as
// it found it). It writes what is needed to tell: the pending commands,
// the undoing of the borrower's state (see drain), and reads their replies.
func (p *Pool) release(pc *poolConn, st *borrowState, touched bool) verdict {
	err := pc.c.Err()
	if !touched {
		if err != nil {
			return verdict{reason: DiscardBroken, cause: err}
		}
		return keep
	}
	retired := pc.gen != p.gen.Load()
	switch {
	case st.err != nil, err != nil:
		return verdict{reason: DiscardBroken, cause: either(st.err, err)}
	case p.stuck(pc, st):
		return verdict{reason: DiscardState, err: flushLeft(pc, st, retired)}
	case retired:
		return verdict{reason: DiscardRetired, err: flushLeft(pc, st, retired)}
	case st.state == 0 && st.pending == 0 && st.db == p.cfg.db:
		return keep
	}
	refused, err := p.drain(pc, st)
	switch {
	case err != nil:
		return verdict{reason: DiscardBroken, cause: err, err: err}
	case refused != nil:
		// The state may still be there: a transaction open, keys watched,
		// READONLY, another database.
		return verdict{reason: DiscardState, cause: refused}
	}
	return keep
}

// stuck reports whether the borrower left state that Close cannot undo, or
// replies it cannot read in time or at all.
func (p *Pool) stuck(pc *poolConn, st *borrowState) bool {
	switch {
	case st.state&(stateSubscribe|stateListen|stateTaint|stateAsking) != 0,
		st.pendingEver, st.pendingBlock > 0:
		return true
	case st.db != p.cfg.db && !p.knowsDB():
		return true
	}
	return !pc.bounded() && (st.state != 0 || st.pending > 0 || st.db != p.cfg.db)
}

// knowsDB reports whether the pool knows the database its connections
// start in, which Close selects again on one left in another: the pool
// dials them into DB, or DB declares the database a Dial of the user's
// selects. A Dial of the user's with DB zero may have selected another
// one, which SELECT 0 would trade for database 0.
func (p *Pool) knowsDB() bool {
	return !p.cfg.userDial || p.cfg.db != 0
}

// bounded reports whether a read on the connection can be given a deadline:
// it implements redis.ConnWithTimeout, or comes from a Dial of the user's
// and implements redis.ConnWithContext. A read on any other redis.Conn is
// bounded only by closing the connection from another goroutine, which a
// conn written by hand may not allow.
func (pc *poolConn) bounded() bool {
	return pc.cwt != nil || pc.userCtx() != nil
}

// flushLeft writes the commands the borrower sent and read no reply to, so
// that none is lost, unless the connection is retired: it may reach a master
// that a failover is about to lose writes on, so nothing more is written,
// and ErrConnRetired says the commands may not have reached the server.
func flushLeft(pc *poolConn, st *borrowState, retired bool) error {
	switch {
	case st.pending == 0:
		return nil
	case retired:
		return ErrConnRetired
	}
	return pc.c.Flush()
}

// drain undoes the borrower's state, reading every pending reply and those of
// its undos within the drain timeout: DISCARD or UNWATCH for MULTI or WATCH,
// READWRITE for READONLY, and SELECT <DB> for another database or one unknown.
// refused is the first undo the server refused, or the refusal of an undo the
// borrower sent with Send (see borrowState.undos): the state may still be
// there.
func (p *Pool) drain(pc *poolConn, st *borrowState) (refused, err error) {
	n := 0 // undos sent
	send := func(cmd string, args ...any) {
		if err == nil {
			err = pc.c.Send(cmd, args...)
			n++
		}
	}
	switch {
	case st.state&stateMulti != 0:
		send("DISCARD")
	case st.state&stateWatch != 0:
		send("UNWATCH")
	}
	if st.state&stateReadOnly != 0 {
		send("READWRITE")
	}
	if st.db != p.cfg.db {
		send("SELECT", p.cfg.db)
	}
	if err != nil {
		return nil, err
	}
	reply, err := pc.doBounded(p.cfg.drainTimeout, "", nil)
	if err != nil {
		return nil, err
	}
	if refused := refusedAt(reply, st.sent-st.pending, st.undos); refused != nil || n == 0 {
		return refused, nil
	}
	rs, _ := reply.([]any)
	if len(rs) < n {
		return errNoUndoReply, nil
	}
	// In order: the commands after a DISCARD that ran are not queued in
	// MULTI, so a reply that is not an error says its command ran.
	for _, r := range rs[len(rs)-n:] {
		if refused := undoRefused(r); refused != nil {
			return refused, nil
		}
	}
	return nil, nil
}
