//! A transaction on one of our database clients' connections: rolled back unless committed.

/// What a connection offers a transaction: plain control statements and whether it is gone.
pub trait TransactionControl {
    type Error: std::fmt::Display;
    /// The backend's name, for log lines.
    const BACKEND: &'static str;
    fn is_closed(&self) -> bool;
    /// Runs `BEGIN`, `COMMIT` or `ROLLBACK`; a COMMIT the server turned into a rollback (a
    /// statement in the transaction failed) must be an error.
    fn run_control_statement(&mut self, sql: &str) -> Result<(), Self::Error>;
}

/// An open transaction; dereferences to its connection for statements.
pub struct Transaction<'connection, Connection: TransactionControl> {
    connection: &'connection mut Connection,
    finished: bool,
}

impl<'connection, Connection: TransactionControl> Transaction<'connection, Connection> {
    pub fn begin(connection: &'connection mut Connection) -> Result<Self, Connection::Error> {
        connection.run_control_statement("BEGIN")?;
        Ok(Transaction { connection, finished: false })
    }

    pub fn commit(mut self) -> Result<(), Connection::Error> {
        self.finished = true;
        self.connection.run_control_statement("COMMIT")
    }
}

impl<Connection: TransactionControl> std::ops::Deref for Transaction<'_, Connection> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.connection
    }
}

impl<Connection: TransactionControl> std::ops::DerefMut for Transaction<'_, Connection> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.connection
    }
}

impl<Connection: TransactionControl> Drop for Transaction<'_, Connection> {
    fn drop(&mut self) {
        if !self.finished
            && !self.connection.is_closed()
            && let Err(error) = self.connection.run_control_statement("ROLLBACK")
        {
            log::warn!("{}: rolling back a transaction failed: {error}", Connection::BACKEND);
        }
    }
}
