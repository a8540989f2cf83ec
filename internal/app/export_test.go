package app

// SetBeforePoolClose makes a's shutdown call f just before it closes the
// database pool.
func SetBeforePoolClose(a *App, f func()) { a.beforePoolClose = f }

// BackgroundRunning names a's background tasks that are running.
func BackgroundRunning(a *App) []string { return a.background.Running() }
