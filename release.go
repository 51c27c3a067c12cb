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
// the undoing of MULTI or WATCH, and reads their replies.
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
	case st.state&(stateSubscribe|stateListen|stateTaint) != 0, st.db != p.cfg.db,
		st.pendingEver, st.pendingBlock > 0,
		pc.cwt == nil && (st.state != 0 || st.pending > 0): // no deadline to read with
		// Do not wait for replies that may not come in time or at all.
		return verdict{reason: DiscardState, err: flushLeft(pc, st, retired)}
	case retired:
		return verdict{reason: DiscardRetired, err: flushLeft(pc, st, retired)}
	case st.state == 0 && st.pending == 0:
		return keep
	}
	refused, err := p.drain(pc, st)
	switch {
	case err != nil:
		return verdict{reason: DiscardBroken, cause: err, err: err}
	case refused != nil:
		// The transaction may still be open, the keys still watched.
		return verdict{reason: DiscardState, cause: refused}
	}
	return keep
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

// drain undoes MULTI and WATCH and reads every pending reply within the
// drain timeout. refused is the error reply to its DISCARD or UNWATCH, or to
// an EXEC, DISCARD or UNWATCH the borrower sent with Send (see
// borrowState.undos), which the server may refuse (an ACL without them) and
// then has undone nothing.
func (p *Pool) drain(pc *poolConn, st *borrowState) (refused, err error) {
	undo := true
	switch {
	case st.state&stateMulti != 0:
		err = pc.c.Send("DISCARD")
	case st.state&stateWatch != 0:
		err = pc.c.Send("UNWATCH")
	default:
		undo = false
	}
	if err != nil {
		return nil, err
	}
	reply, err := pc.cwt.DoWithTimeout(p.cfg.drainTimeout, "")
	if err != nil {
		return nil, err
	}
	if refused := refusedAt(reply, st.sent-st.pending, st.undos); refused != nil || !undo {
		return refused, nil
	}
	if rs, _ := reply.([]any); len(rs) > 0 {
		return undoRefused(rs[len(rs)-1]), nil
	}
	return nil, nil
}
