package redispoolotel

// RegisterSource is Register for any value with a Stats method, with the
// pool's limits given, so that tests can report statistics of their choice.
var RegisterSource = register
