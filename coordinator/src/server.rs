//! The PostgreSQL wire protocol front end (simple and extended query,
//! `COPY FROM STDIN`, cancellation), on pgwire.
//!
//! This module only translates between the wire and the [`Coordinator`]:
//! it parses statement text, binds parameters, encodes results and streams
//! subscriptions. It decides nothing about what a statement means.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use futures::{Sink, SinkExt, stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, ConnectionManager, PgWireServerHandlers, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail, CopyOutResponse};
use pgwire::messages::data::RowDescription;
use pgwire::messages::startup::ParameterStatus;
use weir_sql::statement::{ParsedStatement, parse};

use crate::error::AdapterError;
use crate::sequencer::{Bound, Coordinator, CopyTarget, Described, ExecuteResult, Subscription};
use crate::values::{data_rows, fields, parameter, pg_type};

/// A statement prepared with the extended protocol.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub stmt: ParsedStatement,
    /// The types the planner expects for `$1..$n`.
    pub targets: Vec<Option<DataType>>,
    /// The PostgreSQL types announced for `$1..$n`.
    pub param_types: Vec<Type>,
    pub schema: Option<SchemaRef>,
    /// The plan bound to describe it, which executions reuse while the
    /// catalog is unchanged.
    pub bound: Option<Bound>,
}

pub struct WeirQueryParser {
    coord: Arc<Coordinator>,
}

#[async_trait]
impl QueryParser for WeirQueryParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = parse(sql).map_err(AdapterError::from)?;
        match stmts.len() {
            0 => return Ok(None),
            1 => {}
            _ => {
                return Err(AdapterError::Sql(weir_sql::SqlError::Syntax {
                    message: "cannot insert multiple commands into a prepared statement".into(),
                    position: None,
                })
                .into());
            }
        }
        let stmt = stmts.remove(0);
        let Described {
            params: targets,
            schema,
            bound,
        } = self.coord.describe(&stmt).await?;
        let n = targets.len().max(types.len());
        let param_types = (0..n)
            .map(|i| match types.get(i).cloned().flatten() {
                Some(t) if t != Type::UNKNOWN => t,
                _ => targets
                    .get(i)
                    .cloned()
                    .flatten()
                    .map(|t| pg_type(&t))
                    .unwrap_or(Type::TEXT),
            })
            .collect();
        Ok(Some(Prepared {
            stmt,
            targets,
            param_types,
            schema,
            bound,
        }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.param_types.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(s) => fields(s, column_format.unwrap_or(&Format::UnifiedText)),
            None => vec![],
        })
    }
}

/// The pgwire handlers, shared by every connection.
pub struct Handler {
    coord: Arc<Coordinator>,
    parser: Arc<WeirQueryParser>,
    manager: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
}

/// A COPY in progress on one connection.
#[derive(Default)]
struct CopySlot(Mutex<Option<(CopyTarget, Vec<u8>)>>);

impl Handler {
    pub fn new(coord: Arc<Coordinator>) -> Arc<Self> {
        let manager = Arc::new(ConnectionManager::new());
        Arc::new(Handler {
            parser: Arc::new(WeirQueryParser { coord: coord.clone() }),
            cancel: Arc::new(DefaultCancelHandler::new(manager.clone())),
            coord,
            manager,
        })
    }

    /// Turn an execution result into a wire response.
    async fn respond<C>(
        &self,
        client: &mut C,
        result: ExecuteResult,
        format: &Format,
        describe: bool,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Ok(match result {
            ExecuteResult::Rows { schema, batches } => {
                let f = Arc::new(fields(&schema, format));
                let rows = data_rows(&batches, f.clone());
                Response::Query(QueryResponse::new(f, stream::iter(rows)))
            }
            ExecuteResult::Command { tag } => Response::Execution(Tag::new(&tag)),
            ExecuteResult::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            ExecuteResult::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            ExecuteResult::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            ExecuteResult::CopyIn(target) => {
                let columns = target.columns.len();
                let slot = client.session_extensions().get_or_insert_with(CopySlot::default);
                *slot.0.lock().expect("copy slot") = Some((target, Vec::new()));
                Response::CopyIn(CopyResponse::new(0, columns, stream::empty()))
            }
            ExecuteResult::Subscribe(sub) => {
                let copy_out = sub.copy_out;
                let rows = stream_subscription(client, sub, format, describe).await?;
                Response::Execution(Tag::new(if copy_out { "COPY" } else { "SUBSCRIBE" }).with_rows(rows))
            }
        })
    }
}

/// Send a subscription's rows as they become final, until the client goes
/// away, cancels, or the subscription ends. Returns the rows sent.
async fn stream_subscription<C>(
    client: &mut C,
    mut sub: Subscription,
    format: &Format,
    describe: bool,
) -> PgWireResult<usize>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let f = Arc::new(fields(&sub.schema, format));
    if sub.copy_out {
        let n = sub.schema.fields().len();
        client
            .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
                0,
                n as i16,
                vec![0; n],
            )))
            .await?;
    } else if describe {
        client
            .send(PgWireBackendMessage::RowDescription(RowDescription::new(
                f.iter().map(Into::into).collect(),
            )))
            .await?;
    }
    // Each worker's progress: Some(t) = complete below t; None = finished.
    let mut uppers: Vec<Option<u64>> = vec![Some(0); sub.workers];
    let mut buffer: Vec<RecordBatch> = Vec::new();
    let mut sent = 0;
    let heartbeat = Duration::from_secs(1);
    loop {
        let message = tokio::select! {
            m = sub.messages.recv() => m,
            _ = tokio::time::sleep(heartbeat) => {
                // Writing is the only way to notice a client that went away.
                client.send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new("TimeZone".into(), "UTC".into()))).await?;
                continue;
            }
        };
        let Some((worker, upper, update)) = message else {
            break;
        };
        let parts = update.map_err(AdapterError::Evaluation)?;
        for part in parts.into_iter().filter(|p| p.batch.num_rows() > 0) {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(
                    part.times.iter().map(|t| *t as i64).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(part.diffs)),
            ];
            columns.extend(part.batch.columns().iter().cloned());
            buffer.push(
                RecordBatch::try_new(sub.schema.clone(), columns)
                    .map_err(|e| AdapterError::Internal(e.to_string()))?,
            );
        }
        if let Some(u) = uppers.get_mut(worker) {
            *u = upper;
        }
        let frontier = uppers.iter().flatten().min().copied();
        let done = uppers.iter().all(Option::is_none);
        if buffer.is_empty() {
            if done {
                break;
            }
            continue;
        }
        let all = concat_batches(&sub.schema, &buffer).map_err(|e| AdapterError::Internal(e.to_string()))?;
        let times = all
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("time column")
            .clone();
        let ready: Vec<bool> = times
            .iter()
            .map(|t| frontier.is_none_or(|f| (t.unwrap_or(0) as u64) < f))
            .collect();
        let ready_mask = arrow::array::BooleanArray::from(ready.clone());
        let keep_mask = arrow::array::BooleanArray::from(ready.iter().map(|r| !r).collect::<Vec<_>>());
        let now = arrow::compute::filter_record_batch(&all, &ready_mask)
            .map_err(|e| AdapterError::Internal(e.to_string()))?;
        let later = arrow::compute::filter_record_batch(&all, &keep_mask)
            .map_err(|e| AdapterError::Internal(e.to_string()))?;
        buffer = vec![later];
        if now.num_rows() > 0 {
            let order = sort_to_indices(now.column(0), None, None)
                .map_err(|e| AdapterError::Internal(e.to_string()))?;
            let now = take_record_batch(&now, &order).map_err(|e| AdapterError::Internal(e.to_string()))?;
            if sub.copy_out {
                for line in copy_lines(&now) {
                    client
                        .feed(PgWireBackendMessage::CopyData(CopyData::new(line.into())))
                        .await?;
                    sent += 1;
                }
            } else {
                for row in data_rows(&[now], f.clone()) {
                    client.feed(PgWireBackendMessage::DataRow(row?)).await?;
                    sent += 1;
                }
            }
            client.flush().await?;
        }
        if done {
            break;
        }
    }
    if sub.copy_out {
        client
            .send(PgWireBackendMessage::CopyDone(CopyDone::new()))
            .await?;
    }
    Ok(sent)
}

/// Rows in `COPY` text format, each with its newline.
fn copy_lines(batch: &RecordBatch) -> Vec<Vec<u8>> {
    text_rows(batch)
        .into_iter()
        .map(|mut line| {
            line.push('\n');
            line.into_bytes()
        })
        .collect()
}

/// Rows in `COPY` text format (tab-separated, `\N` for NULL, escaped),
/// without newlines.
pub(crate) fn text_rows(batch: &RecordBatch) -> Vec<String> {
    let options = arrow::util::display::FormatOptions::default();
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| {
            arrow::util::display::ArrayFormatter::try_new(c.as_ref(), &options)
                .expect("every arrow type formats")
        })
        .collect();
    (0..batch.num_rows())
        .map(|i| {
            let fields: Vec<Option<String>> = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(col, fmt)| crate::values::cell(col, i, fmt).text())
                .collect();
            weir_connectors::copy::text_line(fields.iter().map(|f| f.as_deref()))
        })
        .collect()
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmts = match parse(query) {
            Ok(s) => s,
            Err(e) => {
                return Ok(vec![Response::Error(Box::new(
                    AdapterError::from(e).into_error_info(),
                ))]);
            }
        };
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in &stmts {
            match self.coord.execute(stmt, &[]).await {
                Ok(result) => {
                    let copy = matches!(result, ExecuteResult::CopyIn(_));
                    out.push(self.respond(client, result, &Format::UnifiedText, true).await?);
                    if copy {
                        break;
                    }
                }
                Err(e) => {
                    out.push(Response::Error(Box::new(e.into_error_info())));
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Prepared;
    type QueryParser = WeirQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let mut params: Vec<ScalarValue> = Vec::with_capacity(portal.parameters.len());
        for (i, value) in portal.parameters.iter().enumerate() {
            let ty = prepared.param_types.get(i).cloned().unwrap_or(Type::TEXT);
            let target = prepared.targets.get(i).cloned().flatten();
            params.push(parameter(
                value.as_deref(),
                portal.parameter_format.is_binary(i),
                &ty,
                target.as_ref(),
            )?);
        }
        let result = self
            .coord
            .execute_prepared(&prepared.stmt, &params, prepared.bound.as_ref())
            .await?;
        self.respond(client, result, &portal.result_column_format, false)
            .await
    }
}

#[async_trait]
impl CopyHandler for Handler {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = client.session_extensions().get_or_insert_with(CopySlot::default);
        if let Some((_, buf)) = slot.0.lock().expect("copy slot").as_mut() {
            buf.extend_from_slice(&copy_data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = client.session_extensions().get_or_insert_with(CopySlot::default);
        let taken = slot.0.lock().expect("copy slot").take();
        let Some((target, data)) = taken else {
            return Err(AdapterError::Internal("no COPY in progress".into()).into());
        };
        let n = self.coord.finish_copy(&target, &data).await?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(n).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = client.session_extensions().get_or_insert_with(CopySlot::default);
        slot.0.lock().expect("copy slot").take();
        AdapterError::BadCopyFile(format!("COPY from stdin failed: {}", fail.message)).into()
    }
}

impl NoopStartupHandler for Handler {
    fn connection_manager(&self) -> Option<Arc<ConnectionManager>> {
        Some(self.manager.clone())
    }
}

/// Hands the same [`Handler`] to every connection.
pub struct HandlerFactory(pub Arc<Handler>);

impl PgWireServerHandlers for HandlerFactory {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.0.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        self.0.cancel.clone()
    }
}
