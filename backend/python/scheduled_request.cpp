// ScheduledRequest(request, num_new_tokens, start): one scheduled request of a step, as a
// small C type (see bindings.h for why). Mutable like the dataclass it replaces; equality
// compares the three fields; unhashable, as a dataclass with eq.
#include <string>

#include "python/bindings.h"

namespace inflight::py_bind {
namespace {

struct ScheduledObject {
  PyObject_HEAD PyObject* request;
  long long num_new;
  long long start;
  int samples;  // 1/0: fixed at planning time; -1: computed on access
};

PyTypeObject* g_type = nullptr;

ScheduledObject* as_sched(PyObject* o) { return reinterpret_cast<ScheduledObject*>(o); }

int sched_traverse(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(as_sched(self)->request);
  Py_VISIT(Py_TYPE(self));
  return 0;
}

int sched_clear(PyObject* self) {
  Py_CLEAR(as_sched(self)->request);
  return 0;
}

void sched_dealloc(PyObject* self) {
  PyTypeObject* tp = Py_TYPE(self);
  PyObject_GC_UnTrack(self);
  sched_clear(self);
  tp->tp_free(self);
  Py_DECREF(tp);
}

PyObject* sched_new(PyTypeObject* type, PyObject* args, PyObject* kwargs) {
  static const char* names[] = {"request", "num_new_tokens", "start", nullptr};
  PyObject* request = nullptr;
  long long num_new = 0, start = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OLL", const_cast<char**>(names), &request, &num_new, &start)) {
    return nullptr;
  }
  if (type != g_type) {  // a Python subclass: allocate through its own type
    PyObject* o = type->tp_alloc(type, 0);
    if (o == nullptr) return nullptr;
    Py_INCREF(request);
    as_sched(o)->request = request;
    as_sched(o)->num_new = num_new;
    as_sched(o)->start = start;
    as_sched(o)->samples = -1;
    return o;
  }
  return new_scheduled(request, num_new, start, -1);
}

PyObject* get_request(PyObject* self, void*) {
  Py_INCREF(as_sched(self)->request);
  return as_sched(self)->request;
}

int set_request(PyObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete request");
    return -1;
  }
  Py_INCREF(value);
  Py_SETREF(as_sched(self)->request, value);
  as_sched(self)->samples = -1;
  return 0;
}

template <long long ScheduledObject::*Field>
PyObject* get_int(PyObject* self, void*) {
  return PyLong_FromLongLong(as_sched(self)->*Field);
}

template <long long ScheduledObject::*Field>
int set_int(PyObject* self, PyObject* value, void*) {
  if (value == nullptr) {
    PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
    return -1;
  }
  long long v = PyLong_AsLongLong(value);
  if (v == -1 && PyErr_Occurred()) return -1;
  as_sched(self)->*Field = v;
  as_sched(self)->samples = -1;  // the planning-time answer no longer applies
  return 0;
}

PyObject* get_samples(PyObject* self, void*) {
  ScheduledObject* s = as_sched(self);
  if (s->samples >= 0) return PyBool_FromLong(s->samples);
  // as the dataclass: the step reaches the end of the request's known tokens
  PyObject* n = PyObject_GetAttrString(s->request, "num_tokens");
  if (n == nullptr) return nullptr;
  long long num_tokens = PyLong_AsLongLong(n);
  Py_DECREF(n);
  if (num_tokens == -1 && PyErr_Occurred()) return nullptr;
  return PyBool_FromLong(s->start + s->num_new == num_tokens);
}

PyObject* sched_repr(PyObject* self) {
  ScheduledObject* s = as_sched(self);
  PyObject* rid = PyObject_GetAttrString(s->request, "request_id");
  if (rid == nullptr) {
    PyErr_Clear();
    rid = PyObject_Repr(s->request);
    if (rid == nullptr) return nullptr;
  }
  PyObject* out = PyUnicode_FromFormat("ScheduledRequest(request=%R, num_new_tokens=%lld, start=%lld)", rid,
                                       s->num_new, s->start);
  Py_DECREF(rid);
  return out;
}

PyObject* sched_richcompare(PyObject* a, PyObject* b, int op) {
  if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(b, g_type)) Py_RETURN_NOTIMPLEMENTED;
  ScheduledObject *x = as_sched(a), *y = as_sched(b);
  bool eq = x->num_new == y->num_new && x->start == y->start;
  if (eq) {
    int r = PyObject_RichCompareBool(x->request, y->request, Py_EQ);
    if (r < 0) return nullptr;
    eq = r == 1;
  }
  return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

PyGetSetDef g_getset[] = {
    {"request", get_request, set_request, "the engine Request", nullptr},
    {"num_new_tokens", get_int<&ScheduledObject::num_new>, set_int<&ScheduledObject::num_new>,
     "tokens computed this step", nullptr},
    {"start", get_int<&ScheduledObject::start>, set_int<&ScheduledObject::start>,
     "num_computed_tokens when scheduled: first position computed this step", nullptr},
    {"samples", get_samples, nullptr, "True when this step reaches the end of the known tokens: a token is sampled",
     nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr}};

PyType_Slot g_slots[] = {
    {Py_tp_new, reinterpret_cast<void*>(sched_new)},
    {Py_tp_dealloc, reinterpret_cast<void*>(sched_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void*>(sched_traverse)},
    {Py_tp_clear, reinterpret_cast<void*>(sched_clear)},
    {Py_tp_getset, g_getset},
    {Py_tp_repr, reinterpret_cast<void*>(sched_repr)},
    {Py_tp_richcompare, reinterpret_cast<void*>(sched_richcompare)},
    {Py_tp_hash, reinterpret_cast<void*>(PyObject_HashNotImplemented)},
    {Py_tp_doc, const_cast<char*>("ScheduledRequest(request, num_new_tokens, start): one request of a step.")},
    {0, nullptr}};

PyType_Spec g_spec = {"inflight._core.ScheduledRequest", sizeof(ScheduledObject), 0,
                      Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE, g_slots};

}  // namespace

PyObject* new_scheduled(PyObject* request, long long num_new, long long start, int samples) {
  ScheduledObject* o = PyObject_GC_New(ScheduledObject, g_type);
  if (o == nullptr) return nullptr;  // (PyObject_Init took the reference to the heap type)
  Py_INCREF(request);
  o->request = request;
  o->num_new = num_new;
  o->start = start;
  o->samples = samples;
  PyObject_GC_Track(reinterpret_cast<PyObject*>(o));
  return reinterpret_cast<PyObject*>(o);
}

void bind_scheduled_request(py::module_& m) {
  g_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&g_spec));
  if (g_type == nullptr) throw py::error_already_set();
  // the module keeps the type alive for the life of the process (g_type is never released)
  m.add_object("ScheduledRequest", py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(g_type)));
}

}  // namespace inflight::py_bind
